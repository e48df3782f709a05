//! Editing the kernel command line in `cmdline.txt`.
//!
//! The firmware passes only the file's first line to the kernel, as space-separated parameters. A
//! second line is a user mistake, so [`apply`] folds its parameters into the one line rather than
//! dropping them. Parameters are split at whitespace outside double quotes, as the kernel does
//! (`dyndbg="file x.c +p"` is one parameter).

/// Keys the kernel (or early userspace) reads at every occurrence, so setting one adds a parameter
/// instead of replacing: one `console=` per console, one `cgroup_enable=`/`cgroup_disable=` per
/// controller, `modprobe.blacklist=` lists that modprobe merges, one `video=` per output.
pub const REPEATABLE_KEYS: &[&str] = &[
    "console",
    "cgroup_enable",
    "cgroup_disable",
    "modprobe.blacklist",
    "video",
];

/// Returns `text` as exactly one line (ending in a single `\n`, no BOM, no CR) with `remove` taken
/// out and `set` put in. Idempotent.
///
/// Parameters keep their order. Each entry of `remove` drops every parameter with that key (`root`
/// drops `root=...`, `quiet` drops `quiet`), or, if it holds `=`, only parameters equal to it
/// (`console=tty1`). Then each parameter of `set`: a `key=value` whose key is not in
/// [`REPEATABLE_KEYS`] replaces the first parameter with that key in place and drops later ones with
/// that key, or is appended if there is none; a repeatable `key=value` or a bare word (`quiet`) is
/// appended unless that exact parameter is already there. Entries of `set` and `remove` holding
/// several whitespace-separated parameters count as that many entries.
pub fn apply(text: &str, set: &[&str], remove: &[&str]) -> String {
    let mut params: Vec<&str> = split(text).collect();
    for r in remove.iter().flat_map(|r| split(r)) {
        if r.contains('=') {
            params.retain(|p| *p != r);
        } else {
            params.retain(|p| key(p) != r);
        }
    }
    for s in set.iter().flat_map(|s| split(s)) {
        let k = key(s);
        if !s.contains('=') || REPEATABLE_KEYS.contains(&k) {
            if !params.contains(&s) {
                params.push(s);
            }
            continue;
        }
        match params.iter().position(|p| key(p) == k) {
            Some(first) => {
                params[first] = s;
                let mut i = 0;
                params.retain(|p| {
                    let keep = i <= first || key(p) != k;
                    i += 1;
                    keep
                });
            }
            None => params.push(s),
        }
    }
    let mut out = params.join(" ");
    out.push('\n');
    out
}

/// The value of the first parameter with key `key` (`Some("")` for a bare word such as `quiet`,
/// quotes kept as written); `None` if there is none. Reads every line, as [`apply`] does.
pub fn get<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    split(text)
        .find(|p| self::key(p) == key)
        .map(|p| p.split_once('=').map_or("", |(_, v)| v))
}

fn key(param: &str) -> &str {
    param.split_once('=').map_or(param, |(k, _)| k)
}

/// Splits at whitespace (spaces, tabs, CR, LF) outside double quotes, skipping a leading BOM.
fn split(text: &str) -> impl Iterator<Item = &str> {
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rest = body;
    std::iter::from_fn(move || {
        rest = rest.trim_start();
        if rest.is_empty() {
            return None;
        }
        let mut quoted = false;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                if c == '"' {
                    quoted = !quoted;
                }
                !quoted && c.is_whitespace()
            })
            .map_or(rest.len(), |(i, _)| i);
        let (param, tail) = rest.split_at(end);
        rest = tail;
        Some(param)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOCAL: &str = "elevator=deadline net.ifnames=0 console=serial0,115200 dwc_otg.lpm_enable=0 console=tty1 root=LABEL=writable rootfstype=ext4 rootwait fixrtc quiet splash\n";

    #[test]
    fn replaces_in_place_and_appends_cgroups() {
        let out = apply(
            FOCAL,
            &[
                "root=PARTUUID=1a2b3c4d-02",
                "cgroup_enable=cpuset cgroup_enable=memory",
                "cgroup_memory=1",
            ],
            &[],
        );
        assert_eq!(
            out,
            "elevator=deadline net.ifnames=0 console=serial0,115200 dwc_otg.lpm_enable=0 console=tty1 root=PARTUUID=1a2b3c4d-02 rootfstype=ext4 rootwait fixrtc quiet splash cgroup_enable=cpuset cgroup_enable=memory cgroup_memory=1\n"
        );
        assert_eq!(get(&out, "root"), Some("PARTUUID=1a2b3c4d-02"));
        assert_eq!(get(&out, "quiet"), Some(""));
        assert_eq!(get(&out, "nosuch"), None);
    }

    #[test]
    fn later_duplicates_of_a_set_key_are_dropped() {
        let out = apply(
            "root=/dev/sda2 quiet root=/dev/sdb2 x\n",
            &["root=/dev/mmcblk0p2"],
            &[],
        );
        assert_eq!(out, "root=/dev/mmcblk0p2 quiet x\n");
    }

    #[test]
    fn repeatable_and_bare_tokens_are_added_once() {
        let once = apply(
            FOCAL,
            &["console=tty1", "console=ttyAMA0", "quiet", "nosplash"],
            &[],
        );
        assert!(
            once.ends_with("splash console=ttyAMA0 nosplash\n"),
            "{once}"
        );
        assert_eq!(apply(&once, &["console=ttyAMA0", "nosplash"], &[]), once);
    }

    #[test]
    fn remove_by_key_word_or_exact_param() {
        let out = apply(FOCAL, &[], &["quiet", "splash", "console=tty1", "elevator"]);
        assert_eq!(
            out,
            "net.ifnames=0 console=serial0,115200 dwc_otg.lpm_enable=0 root=LABEL=writable rootfstype=ext4 rootwait fixrtc\n"
        );
    }

    #[test]
    fn folds_extra_lines_strips_bom_and_cr() {
        let out = apply("\u{feff}a=1 b\r\n\r\nc=3\td\r\n", &[], &[]);
        assert_eq!(out, "a=1 b c=3 d\n");
        assert_eq!(apply("", &[], &[]), "\n");
        assert_eq!(get("\u{feff}a=1", "a"), Some("1"));
    }

    #[test]
    fn quoted_values_stay_one_parameter() {
        let text = "dyndbg=\"file x.c +p\" quiet\n";
        assert_eq!(get(text, "dyndbg"), Some("\"file x.c +p\""));
        let out = apply(text, &["dyndbg=\"file y.c +p\""], &[]);
        assert_eq!(out, "dyndbg=\"file y.c +p\" quiet\n");
        assert_eq!(apply(&out, &["dyndbg=\"file y.c +p\""], &[]), out);
    }

    #[test]
    fn idempotent() {
        let set = [
            "root=PARTUUID=1a2b3c4d-02",
            "cgroup_enable=memory",
            "quiet",
            "x=1",
        ];
        let remove = ["splash", "console=tty1"];
        for input in [FOCAL, "x=0 x=2\r\nquiet quiet\n", "", "\u{feff}"] {
            let once = apply(input, &set, &remove);
            assert_eq!(apply(&once, &set, &remove), once, "{input:?}");
        }
    }
}
