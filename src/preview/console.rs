//! Reading a booting node's serial console, line by line: which boot stage it has reached, what
//! went fatally wrong, and the facts it prints on the way (cloud-init's `ci-info` tables, the
//! getty's `<host> login:` prompt, the ssh host keys).
//!
//! Lines arrive as the guest wrote them: `\r\n` endings, ANSI colour in systemd's status lines, a
//! kernel timestamp (`[   41.97] `) and a `cloud-init[284]: ` or syslog (`<14>Nov 29 10:58:13
//! cloud-init: `) prefix; all of that is stripped before matching. The patterns are the texts of
//! Linux, systemd and cloud-init themselves, not of any one image (checked against Debian 12's
//! kernel 6.1, systemd 252 and cloud-init 22.4; Ubuntu 20.04's systemd 245 and kernel 5.4 print
//! the same phrases).

use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;

/// A boot stage, in the order a healthy boot reaches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The kernel printed its banner.
    Kernel,
    /// The root file system was mounted.
    Root,
    /// systemd runs as PID 1.
    Systemd,
    /// cloud-init's `init-local` stage started.
    InitLocal,
    /// cloud-init's `init` stage (network up) started.
    Init,
    /// cloud-init's `modules:config` stage started.
    ModulesConfig,
    /// cloud-init's `modules:final` stage started.
    ModulesFinal,
    /// cloud-init finished.
    Finished,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 8] = [
        Stage::Kernel,
        Stage::Root,
        Stage::Systemd,
        Stage::InitLocal,
        Stage::Init,
        Stage::ModulesConfig,
        Stage::ModulesFinal,
        Stage::Finished,
    ];

    /// What reaching it means, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::Kernel => "kernel started",
            Stage::Root => "root file system mounted",
            Stage::Systemd => "systemd started",
            Stage::InitLocal => "cloud-init init-local",
            Stage::Init => "cloud-init init (network)",
            Stage::ModulesConfig => "cloud-init modules:config",
            Stage::ModulesFinal => "cloud-init modules:final",
            Stage::Finished => "cloud-init finished",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Something one console line told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A stage was reached; the text says what the line showed (device, version, datasource).
    Stage(Stage, String),
    /// The boot cannot go on (kernel panic, no root device, ...): the line, cleaned.
    Fatal(String),
    /// Worth reporting but not fatal: a unit that failed, a cloud-init warning.
    Note(String),
}

/// An IPv4 address on an interface, as cloud-init's "Net device info" table lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IfAddr {
    /// The interface.
    pub device: String,
    /// The address.
    pub address: Ipv4Addr,
    /// Its prefix length (from the table's mask).
    pub prefix: u8,
}

/// A default route, as cloud-init's "Route IPv4 info" table lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DefaultRoute {
    /// The gateway.
    pub gateway: Ipv4Addr,
    /// The interface.
    pub device: String,
}

/// What the console said about the running system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsoleFacts {
    /// The host name of the last `<host> login:` prompt.
    pub login_hostname: Option<String>,
    /// IPv4 addresses from the last "Net device info" table.
    pub addresses: Vec<IfAddr>,
    /// Default routes from the last "Route IPv4 info" table.
    pub default_routes: Vec<DefaultRoute>,
    /// ssh host public keys (`TYPE BASE64 COMMENT`) between cloud-init's `BEGIN/END SSH HOST KEY
    /// KEYS` lines.
    pub host_keys: Vec<String>,
    /// The datasource named by cloud-init's "finished" line.
    pub datasource: Option<String>,
}

/// Which `ci-info` table the following rows belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    None,
    NetDevices,
    Routes4,
    Other,
}

/// The console reader: feed it lines, collect events and facts.
#[derive(Debug)]
pub struct Console {
    table: Table,
    in_host_keys: bool,
    /// The facts gathered so far.
    pub facts: ConsoleFacts,
}

impl Default for Console {
    fn default() -> Self {
        Console::new()
    }
}

impl Console {
    /// A reader that has seen nothing yet.
    pub fn new() -> Console {
        Console {
            table: Table::None,
            in_host_keys: false,
            facts: ConsoleFacts::default(),
        }
    }

    /// Read one line of console output (with or without its line ending).
    pub fn line(&mut self, raw: &str) -> Vec<Event> {
        let mut events = Vec::new();
        let mut text = clean(raw);
        // The getty prompt has no line ending: whatever the console prints next lands after it.
        if let Some((host, rest)) = login_prompt(&text) {
            self.facts.login_hostname = Some(host);
            text = rest;
        }
        let message = strip_prefixes(&text);
        self.read_message(message, &mut events);
        events
    }

    fn read_message(&mut self, m: &str, events: &mut Vec<Event>) {
        if m == "-----BEGIN SSH HOST KEY KEYS-----" {
            self.in_host_keys = true;
            self.facts.host_keys.clear();
            return;
        }
        if m == "-----END SSH HOST KEY KEYS-----" {
            self.in_host_keys = false;
            return;
        }
        if self.in_host_keys {
            if !m.is_empty() {
                self.facts.host_keys.push(m.to_owned());
            }
            return;
        }
        if let Some(info) = m.strip_prefix("ci-info: ") {
            self.ci_info(info);
            return;
        }
        if let Some(event) = stage_of(m) {
            if let Event::Stage(Stage::Finished, detail) = &event {
                self.facts.datasource = detail
                    .strip_prefix("datasource ")
                    .map(|d| d.split_whitespace().next().unwrap_or(d).to_owned());
            }
            events.push(event);
            return;
        }
        if FATAL.iter().any(|p| m.contains(p)) {
            events.push(Event::Fatal(m.to_owned()));
            return;
        }
        if let Some(unit) = m.strip_prefix("[FAILED] ") {
            events.push(Event::Note(format!("systemd: {}", unit.trim())));
        } else if m.contains("[WARNING]: ") && m.contains(".py[") {
            events.push(Event::Note(format!("cloud-init: {m}")));
        }
    }

    fn ci_info(&mut self, info: &str) {
        let info = info.trim();
        if info.starts_with('+') {
            let title = info.trim_matches(|c| c == '+' || c == '-');
            if title.is_empty() {
                return; // a rule inside the current table
            }
            self.table = match title {
                "Net device info" => {
                    self.facts.addresses.clear();
                    Table::NetDevices
                }
                "Route IPv4 info" => {
                    self.facts.default_routes.clear();
                    Table::Routes4
                }
                _ => Table::Other,
            };
            return;
        }
        let Some(row) = info.strip_prefix('|').and_then(|r| r.strip_suffix('|')) else {
            return;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        match (self.table, cells.as_slice()) {
            (Table::NetDevices, [device, _up, address, mask, ..]) => {
                if let (Ok(address), Ok(mask)) =
                    (address.parse::<Ipv4Addr>(), mask.parse::<Ipv4Addr>())
                {
                    self.facts.addresses.push(IfAddr {
                        device: (*device).to_owned(),
                        address,
                        prefix: u32::from(mask).count_ones() as u8,
                    });
                }
            }
            (Table::Routes4, [_n, "0.0.0.0", gateway, "0.0.0.0", device, ..]) => {
                if let Ok(gateway) = gateway.parse() {
                    self.facts.default_routes.push(DefaultRoute {
                        gateway,
                        device: (*device).to_owned(),
                    });
                }
            }
            _ => {}
        }
    }
}

/// Console texts after which the boot cannot go on.
const FATAL: &[&str] = &[
    "Kernel panic - not syncing",
    // initramfs-tools (Ubuntu, Debian) when root= names nothing that appeared.
    "Gave up waiting for root",
    "does not exist.  Dropping to a shell",
    "VFS: Unable to mount root fs",
    "No working init found",
    "Attempted to kill init",
];

/// The stage a message marks, if any.
fn stage_of(m: &str) -> Option<Event> {
    let stage = |s: Stage, detail: String| Some(Event::Stage(s, detail));
    if m.starts_with("Booting Linux on physical CPU") || m.starts_with("Linux version ") {
        return stage(Stage::Kernel, m.to_owned());
    }
    if let Some(rest) = m.strip_prefix("EXT4-fs (")
        && let Some((device, tail)) = rest.split_once("): ")
        && tail.starts_with("mounted filesystem")
    {
        return stage(Stage::Root, device.to_owned());
    }
    if let Some(rest) = m.strip_prefix("VFS: Mounted root (") {
        return stage(Stage::Root, rest.trim_end_matches('.').to_owned());
    }
    if let Some(rest) = m.strip_prefix("systemd ")
        && rest.contains(" running in system mode")
    {
        let version = rest.split_whitespace().next().unwrap_or("");
        return stage(Stage::Systemd, format!("systemd {version}"));
    }
    let rest = m.strip_prefix("Cloud-init v. ")?;
    let (version, rest) = rest.split_once(' ')?;
    if let Some(name) = rest.strip_prefix("running '") {
        let name = name.split('\'').next().unwrap_or("");
        let s = match name {
            "init-local" => Stage::InitLocal,
            "init" => Stage::Init,
            "modules:config" => Stage::ModulesConfig,
            "modules:final" => Stage::ModulesFinal,
            _ => return None,
        };
        return stage(s, format!("cloud-init {version}"));
    }
    if rest.starts_with("finished at ") {
        let datasource = rest
            .split_once("Datasource ")
            // "... Datasource DataSourceNoCloud [seed=/dev/vda1][dsmode=net].  Up 76.44 seconds"
            .map(|(_, d)| {
                d.split(".  Up ")
                    .next()
                    .unwrap_or(d)
                    .trim()
                    .trim_end_matches('.')
            })
            .unwrap_or("unknown");
        return stage(Stage::Finished, format!("datasource {datasource}"));
    }
    None
}

/// `<host> login: rest` → the host and the rest. Host names have no spaces; the prompt is the
/// getty's, so the line starts with it.
fn login_prompt(text: &str) -> Option<(String, String)> {
    let (host, rest) = text
        .split_once(" login: ")
        .or_else(|| text.strip_suffix(" login:").map(|h| (h, "")))?;
    // "Last login: ..." follows a login, not a prompt.
    let valid = !host.is_empty()
        && host != "Last"
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    valid.then(|| (host.to_owned(), rest.to_owned()))
}

/// Drops the line ending, CRs and ANSI escape sequences, and trims.
fn clean(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ parameters final-byte (a letter).
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' | '\n' => {}
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out.trim().to_owned()
}

/// The message without a kernel timestamp, a `name[pid]: ` tag or a syslog header.
fn strip_prefixes(text: &str) -> &str {
    let mut m = text.trim();
    if let Some(rest) = m.strip_prefix('[')
        && let Some((stamp, after)) = rest.split_once(']')
        && stamp.trim().parse::<f64>().is_ok()
    {
        m = after.trim_start();
    }
    // Syslog: "<14>Nov 29 10:58:13 cloud-init: ..."
    if let Some(rest) = m.strip_prefix('<')
        && let Some((prio, after)) = rest.split_once('>')
        && prio.chars().all(|c| c.is_ascii_digit())
    {
        // Month, day, time, tag.
        let mut parts = after.splitn(4, ' ');
        let (_, _, _, tagged) = (parts.next(), parts.next(), parts.next(), parts.next());
        if let Some((_, msg)) = tagged.and_then(|t| t.split_once(": ")) {
            m = msg;
        }
    }
    // "cloud-init[284]: " or "systemd[1]: ".
    if let Some((tag, after)) = m.split_once("]: ")
        && let Some((name, pid)) = tag.split_once('[')
        && !name.is_empty()
        && !name.contains(' ')
        && pid.chars().all(|c| c.is_ascii_digit())
    {
        m = after;
    }
    m.trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(lines: &[&str]) -> (Console, Vec<Event>) {
        let mut c = Console::new();
        let events = lines.iter().flat_map(|l| c.line(l)).collect();
        (c, events)
    }

    fn stages(events: &[Event]) -> Vec<(Stage, String)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Stage(s, d) => Some((*s, d.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn stages_from_kernel_systemd_and_cloud_init_lines() {
        let (c, events) = read(&[
            "[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x410fd083]\r\n",
            "[    3.123456] EXT4-fs (vda2): mounted filesystem 8f2c-11 with ordered data mode. Quota mode: none.\r\n",
            "[    4.5] systemd[1]: systemd 252.33-1~deb12u1 running in system mode (+PAM +AUDIT)\r\n",
            "[   20.723949] cloud-init[251]: Cloud-init v. 22.4.2 running 'init-local' at Sun, 29 Nov 2026 10:57:19 +0000. Up 20.34 seconds.\r\n",
            "[   41.607936] cloud-init[284]: Cloud-init v. 22.4.2 running 'init' at Sun, 29 Nov 2026 10:57:40 +0000. Up 41.28 seconds.\r\n",
            "pi3 login: [   60.518927] cloud-init[352]: Cloud-init v. 22.4.2 running 'modules:config' at Sun, 29 Nov 2026 10:57:58 +0000. Up 59.95 seconds.\r\n",
            "[   73.886234] cloud-init[382]: Cloud-init v. 22.4.2 running 'modules:final' at Sun, 29 Nov 2026 10:58:12 +0000. Up 73.34 seconds.\r\n",
            "[   76.619916] cloud-init[382]: Cloud-init v. 22.4.2 finished at Sun, 29 Nov 2026 10:58:15 +0000. Datasource DataSourceNoCloud [seed=/dev/vda1][dsmode=net].  Up 76.44 seconds\r\n",
        ]);
        let got = stages(&events);
        assert_eq!(
            got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            Stage::ALL.to_vec()
        );
        assert_eq!(got[1].1, "vda2");
        assert_eq!(got[2].1, "systemd 252.33-1~deb12u1");
        assert_eq!(got[3].1, "cloud-init 22.4.2");
        assert_eq!(
            got[7].1,
            "datasource DataSourceNoCloud [seed=/dev/vda1][dsmode=net]"
        );
        assert_eq!(c.facts.datasource.as_deref(), Some("DataSourceNoCloud"));
        assert_eq!(c.facts.login_hostname.as_deref(), Some("pi3"));
    }

    #[test]
    fn ubuntu_focal_forms() {
        let (_, events) = read(&[
            "[    2.9] EXT4-fs (mmcblk0p2): mounted filesystem with ordered data mode. Opts: (null)",
            "[    4.1] systemd[1]: systemd 245.4-4ubuntu3.17 running in system mode. (+PAM +AUDIT)",
            "[    1.0] VFS: Mounted root (ext4 filesystem) readonly on device 179:2.",
        ]);
        let got = stages(&events);
        assert_eq!(got[0], (Stage::Root, "mmcblk0p2".into()));
        assert_eq!(got[1], (Stage::Systemd, "systemd 245.4-4ubuntu3.17".into()));
        assert_eq!(got[2].0, Stage::Root);
    }

    #[test]
    fn ansi_colour_and_failures() {
        let (_, events) = read(&[
            "[\x1b[0;1;31mFAILED\x1b[0m] Failed to start \x1b[0;1;39mnetplan.service\x1b[0m.\r",
            "[   30.1] cloud-init[300]: 2026-11-29 10:57:30,1 - util.py[WARNING]: failed stage init-local",
            "[    9.9] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
            "Gave up waiting for root file system device.  Common problems:",
            "ALERT!  PARTUUID=12345678-02 does not exist.  Dropping to a shell!",
            "[    1.0] random: crng init done",
        ]);
        assert_eq!(
            events,
            vec![
                Event::Note("systemd: Failed to start netplan.service.".into()),
                Event::Note(
                    "cloud-init: 2026-11-29 10:57:30,1 - util.py[WARNING]: failed stage init-local"
                        .into()
                ),
                Event::Fatal(
                    "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"
                        .into()
                ),
                Event::Fatal("Gave up waiting for root file system device.  Common problems:".into()),
                Event::Fatal("ALERT!  PARTUUID=12345678-02 does not exist.  Dropping to a shell!".into()),
            ]
        );
    }

    #[test]
    fn ci_info_tables_give_addresses_and_default_routes() {
        let (c, _) = read(&[
            "[   41.97] cloud-init[284]: ci-info: ++++++++++++++++++++Net device info++++++++++++++++++++",
            "[   41.97] cloud-init[284]: ci-info: +--------+------+----------------------------+---------------+--------+-------------------+",
            "[   41.97] cloud-init[284]: ci-info: | Device |  Up  |          Address           |      Mask     | Scope  |     Hw-Address    |",
            "[   41.98] cloud-init[284]: ci-info: |  eth0  | True |        192.168.1.13        | 255.255.255.0 | global | 52:54:00:12:34:56 |",
            "[   41.98] cloud-init[284]: ci-info: |  eth0  | True | fec0::5054:ff:fe12:3456/64 |       .       |  site  | 52:54:00:12:34:56 |",
            "[   41.98] cloud-init[284]: ci-info: |   lo   | True |         127.0.0.1          |   255.0.0.0   |  host  |         .         |",
            "[   41.99] cloud-init[284]: ci-info: +++++++++++++++++++++++++++++Route IPv4 info+++++++++++++++++++++++++++++",
            "[   41.99] cloud-init[284]: ci-info: | Route | Destination |   Gateway   |    Genmask    | Interface | Flags |",
            "[   41.99] cloud-init[284]: ci-info: |   0   |   0.0.0.0   | 192.168.1.1 |    0.0.0.0    |    eth0   |   UG  |",
            "[   41.99] cloud-init[284]: ci-info: |   1   | 192.168.1.0 |   0.0.0.0   | 255.255.255.0 |    eth0   |   U   |",
            "[   42.00] cloud-init[284]: ci-info: +++++++++++++++++++Route IPv6 info+++++++++++++++++++",
            "[   42.01] cloud-init[284]: ci-info: |   2   |     ::/0    | fe80::2 |    eth0   |  UGe  |",
        ]);
        assert_eq!(
            c.facts.addresses,
            vec![
                IfAddr {
                    device: "eth0".into(),
                    address: "192.168.1.13".parse().unwrap(),
                    prefix: 24
                },
                IfAddr {
                    device: "lo".into(),
                    address: "127.0.0.1".parse().unwrap(),
                    prefix: 8
                }
            ]
        );
        assert_eq!(
            c.facts.default_routes,
            vec![DefaultRoute {
                gateway: "192.168.1.1".parse().unwrap(),
                device: "eth0".into()
            }]
        );
    }

    #[test]
    fn host_keys_between_the_markers_and_syslog_prefixes() {
        let (c, events) = read(&[
            "<14>Nov 29 10:58:14 cloud-init: -----BEGIN SSH HOST KEY FINGERPRINTS-----",
            "-----BEGIN SSH HOST KEY KEYS-----\r",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAQadkmzdwyAVSr4 root@pi3\r",
            "-----END SSH HOST KEY KEYS-----\r",
        ]);
        assert!(events.is_empty());
        assert_eq!(
            c.facts.host_keys,
            vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAQadkmzdwyAVSr4 root@pi3"]
        );
    }

    #[test]
    fn login_prompt_alone_and_a_none_datasource() {
        let (c, events) = read(&[
            "node-7.lan login: ",
            "Cloud-init v. 20.1 finished at Tue. Datasource DataSourceNone.  Up 9.0 seconds",
        ]);
        assert_eq!(c.facts.login_hostname.as_deref(), Some("node-7.lan"));
        assert_eq!(c.facts.datasource.as_deref(), Some("DataSourceNone"));
        assert_eq!(
            stages(&events),
            vec![(Stage::Finished, "datasource DataSourceNone".into())]
        );
        // Not a prompt: words before "login:".
        let (c, _) = read(&["Last login: today"]);
        assert_eq!(c.facts.login_hostname, None);
    }
}
