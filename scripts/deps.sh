#!/bin/sh
# Check that the system packages in scripts/deps.txt are installed and install the missing ones
# with apt-get (through sudo when not root), saying in one line what and why; or stop with the
# exact command to run when that cannot be done here.
#
#   scripts/deps.sh build    the packages building pi-image needs (make build, make demo)
#   scripts/deps.sh test     those and the ones the tests need (make test)
#   scripts/deps.sh boot     those and the ones booting images needs (pi-image preview,
#                            make test-boot, .ci/run)
#
# PI_IMAGE_SKIP_DEPS=1 skips the check (another distribution, packages installed by hand).
set -eu

case "${1:-}" in
build) groups=" build " purpose="to build pi-image" ;;
test) groups=" build test " purpose="to build pi-image and run its tests" ;;
boot) groups=" build test boot " purpose="to build pi-image, run its tests and boot nodes under QEMU" ;;
*)
	echo "usage: $0 build|test|boot" >&2
	exit 2
	;;
esac
[ -n "${PI_IMAGE_SKIP_DEPS:-}" ] && exit 0

list="$(dirname "$0")/deps.txt"
wanted=$(awk -v groups="$groups" '!/^#/ && NF >= 2 && index(groups, " " $2 " ") { print $1 }' "$list")

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
	echo "pi-image: no dpkg-query/apt-get here (not Debian or Ubuntu), so the system packages" \
		"cannot be checked. Install the equivalents of:" $wanted \
		"(see $list for why each), then run again with PI_IMAGE_SKIP_DEPS=1." >&2
	exit 1
fi

# Installed packages print "name installed"; unknown ones print nothing (dpkg-query then
# complains on stderr and exits non-zero, which is expected here).
installed=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' $wanted 2>/dev/null |
	awk '$2 == "installed" { print $1 }' || true)
missing=""
for p in $wanted; do
	case " $(echo $installed) " in
	*" $p "*) ;;
	*) missing="$missing $p" ;;
	esac
done
[ -z "$missing" ] && exit 0

command="apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" = 0 ]; then
	sudo=""
elif command -v sudo >/dev/null 2>&1; then
	sudo="sudo "
else
	echo "pi-image: missing system packages $purpose (see $list for why each):$missing." \
		"Install them as root: $command" >&2
	exit 1
fi
echo "pi-image: installing the missing system packages $purpose (see $list):$missing" \
	"($sudo$command)" >&2
# apt's and dpkg's progress lines go to stdout and are dropped; their errors stay on stderr.
if ! { ${sudo}apt-get update -qq && ${sudo}env DEBIAN_FRONTEND=noninteractive $command -qq; } >/dev/null; then
	echo "pi-image: installing failed; run it yourself: $sudo$command" >&2
	exit 1
fi
