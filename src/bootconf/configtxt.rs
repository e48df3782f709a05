//! Editing and evaluating the Raspberry Pi firmware's `config.txt` (and the files it includes).
//!
//! The patchers ([`set`], [`remove`], [`confine_key`]) work on a line model that keeps every byte
//! they have no reason to change: comments, blank lines, unrelated lines, each line's own ending
//! (LF or CRLF) and a UTF-8 byte-order mark. Lines they add use the file's dominant line ending, and
//! their output always ends with a line ending (an empty input stays empty).
//!
//! A *section* names the filter a block of lines sits under: `all` for lines before any filter or
//! after `[all]`, otherwise the one active filter (`pi4`, `cm4`, `HDMI:0`, ...). Blocks under
//! several combined filters (`[pi4]` followed by `[HDMI:0]` without an `[all]` between) belong to
//! no section, so the patchers never touch them. Section and key names are case-sensitive, as the
//! firmware reads them.
//!
//! [`effective`] reads the files the way the firmware does and reports which line each final
//! setting came from.

use std::fmt;
use std::str::FromStr;

/// Keys the firmware accumulates rather than overrides: every matching line counts, in order.
pub const REPEATABLE_KEYS: &[&str] = &["dtoverlay", "dtparam", "include", "gpio"];

/// Keys written as a command with space-separated arguments (`initramfs initrd.img followkernel`)
/// rather than as `key=value`.
pub const SPACE_FORM_KEYS: &[&str] = &["initramfs", "include"];

/// Model filters share one slot in the firmware's filter state: each replaces the previous one.
const MODEL_FILTERS: &[&str] = &[
    "none", "pi1", "pi2", "pi3", "pi3+", "pi4", "pi400", "pi5", "pi500", "cm1", "cm3", "cm3+",
    "cm4", "cm4s", "cm5", "pi0", "pi0w", "pi02",
];

/// The firmware's UTF-8 byte-order mark, kept (patchers) or skipped (evaluator).
const BOM: char = '\u{feff}';

/// Makes `key=value` effective in `section` (e.g. `"pi4"`, `"all"`).
///
/// If the key is already set in blocks of that section, the last such line is rewritten in place
/// and earlier ones in that section are dropped. Otherwise the line goes at the end of the file's
/// last block when that block is the section's, else into a new `[section]` block appended at the
/// end. Keys in [`SPACE_FORM_KEYS`] are written as `key value`. Keys in [`REPEATABLE_KEYS`] are never
/// replaced: the exact setting is added only if that section does not already have it.
/// Idempotent.
///
/// Refusal: a setting that could not be written as one line the firmware reads back the same way
/// (a value with a line break or surrounding whitespace, an empty value for a space-form key, a key
/// that is empty or holds `=`, whitespace, or starts with `#` or `[`, a section that is empty or
/// holds a bracket or line break) is refused by returning `text` unchanged. Callers are expected to
/// validate such input first; [`is_writable`] tells whether `set` would accept it.
pub fn set(text: &str, section: &str, key: &str, value: &str) -> String {
    if !is_writable(section, key, value) {
        return text.to_owned();
    }
    let mut doc = Doc::parse(text);
    doc.set(section, key, value);
    doc.render()
}

/// Whether [`set`] accepts this setting (see there for what it refuses).
pub fn is_writable(section: &str, key: &str, value: &str) -> bool {
    let section_ok = !section.is_empty()
        && !section.contains(['[', ']', '\n', '\r'])
        && section.trim() == section;
    let key_ok = !key.is_empty()
        && !key.contains(|c: char| c == '=' || c.is_whitespace())
        && !key.starts_with(['#', '[']);
    let value_ok = !value.contains(['\n', '\r'])
        && value.trim() == value
        && !(value.is_empty() && SPACE_FORM_KEYS.contains(&key));
    section_ok && key_ok && value_ok
}

/// Deletes every line setting `key` in blocks of `section`.
pub fn remove(text: &str, section: &str, key: &str) -> String {
    let mut doc = Doc::parse(text);
    let hits = doc.lines_setting(key, |s| s == Some(section));
    doc.delete(&hits);
    doc.render()
}

/// Confines `key` to `sections`: deletes every line setting it in blocks outside them (including
/// blocks under combined filters) and makes the value those lines gave each of `sections` effective
/// there instead.
///
/// For each section that value is the one on the last deleted line whose block applied to all of
/// that section's models (`[all]`, the section itself, or a wider model filter such as `[pi3]` for
/// `pi3+`); a section no deleted line applied to gets nothing. A section that already sets the key
/// after that line keeps its own value (it won before, and still wins). Otherwise the key is set in
/// place if the section has it, else added to the section's last existing block (safe there, since
/// no line outside `sections` sets the key any more), else appended in a new block as [`set`] does.
/// Idempotent: a second run finds nothing outside `sections`.
///
/// Example: `confine_key(cfg, "device_tree_address", &["pi2", "pi3", "pi0"])` keeps U-Boot working on
/// older models while a Pi 4 booting the kernel directly sees no `device_tree_address`.
pub fn confine_key(text: &str, key: &str, sections: &[&str]) -> String {
    let mut doc = Doc::parse(text);
    let outside = doc.lines_setting(key, |s| !s.is_some_and(|s| sections.contains(&s)));
    if outside.is_empty() {
        return doc.render();
    }
    let scopes = doc.scopes();
    let mut moves: Vec<(&str, String)> = Vec::new();
    for &section in sections {
        let applied = outside.iter().rev().find(|&&i| {
            scopes[i]
                .section
                .as_deref()
                .is_some_and(|filter| covers(filter, section))
        });
        let Some(&last) = applied else { continue };
        let own_later = doc
            .lines_setting(key, |s| s == Some(section))
            .iter()
            .any(|&i| i > last);
        let repeated = moves.iter().any(|(s, _)| *s == section);
        if let (false, false, Some(value)) = (own_later, repeated, doc.value_at(last)) {
            moves.push((section, value.to_owned()));
        }
    }
    doc.delete(&outside);
    for (section, value) in moves {
        if is_writable(section, key, &value) {
            doc.place(section, key, &value);
        }
    }
    doc.render()
}

/// Whether lines under `[filter]` apply to every model `[section]` selects.
fn covers(filter: &str, section: &str) -> bool {
    if filter == "all" || filter == section {
        return true;
    }
    let mut selected = Model::ALL
        .into_iter()
        .filter(|m| m.matches_filter(section))
        .peekable();
    selected.peek().is_some() && selected.all(|m| m.matches_filter(filter))
}

/// What one line of config.txt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind<'a> {
    Blank,
    Comment,
    /// A conditional filter, `[name]`.
    Section(&'a str),
    /// `key=value`, or `key value...` for commands such as `initramfs` and `include`.
    Setting {
        key: &'a str,
        value: &'a str,
    },
    /// Anything else (a bare word): the firmware ignores it.
    Other,
}

fn classify(line: &str) -> Kind<'_> {
    let t = line.trim();
    if t.is_empty() {
        return Kind::Blank;
    }
    if t.starts_with('#') {
        return Kind::Comment;
    }
    if let Some(rest) = t.strip_prefix('[') {
        // Anything after the closing bracket is ignored, as the firmware does.
        return Kind::Section(rest.find(']').map_or(rest, |end| &rest[..end]));
    }
    let end = t
        .find(|c: char| c == '=' || c.is_whitespace())
        .unwrap_or(t.len());
    let (key, rest) = t.split_at(end);
    if key.is_empty() || rest.is_empty() {
        return Kind::Other;
    }
    let value = rest.strip_prefix('=').unwrap_or_else(|| rest.trim_start());
    Kind::Setting { key, value }
}

fn format_line(key: &str, value: &str) -> String {
    if SPACE_FORM_KEYS.contains(&key) {
        format!("{key} {value}")
    } else {
        format!("{key}={value}")
    }
}

/// The firmware's filter state: active filters, at most one per filter type.
#[derive(Debug, Default)]
struct Filters {
    active: Vec<(String, String)>,
}

impl Filters {
    fn enter(&mut self, name: &str) {
        if name == "all" {
            self.active.clear();
            return;
        }
        let ty = filter_type(name);
        match self.active.iter_mut().find(|(t, _)| *t == ty) {
            Some(slot) => slot.1 = name.to_owned(),
            None => self.active.push((ty, name.to_owned())),
        }
    }

    /// The section the current block is addressed by; `None` under combined filters.
    fn section(&self) -> Option<&str> {
        match self.active.as_slice() {
            [] => Some("all"),
            [(_, name)] => Some(name),
            _ => None,
        }
    }

    /// Whether lines here apply to `model`. Filters other than model filters depend on what is
    /// attached at boot (HDMI, EDID, GPIO, serial number, tryboot...), so they never match here.
    fn matches(&self, model: Model) -> bool {
        self.active
            .iter()
            .all(|(ty, name)| ty == "model" && model.matches_filter(name))
    }
}

fn filter_type(name: &str) -> String {
    if MODEL_FILTERS.contains(&name) {
        "model".to_owned()
    } else if name.starts_with("0x") {
        "serial".to_owned()
    } else {
        name.split([':', '=']).next().unwrap_or(name).to_owned()
    }
}

/// One line: its text without the ending, and the ending it had (`""` only on a last line).
#[derive(Debug)]
struct Line {
    text: String,
    end: &'static str,
}

/// Where a line sits: its block (0 = before any filter, then one per filter line) and the section
/// that block is addressed by.
#[derive(Debug)]
struct Scope {
    block: usize,
    section: Option<String>,
}

/// A config.txt as lines, for the patchers.
#[derive(Debug)]
struct Doc {
    bom: bool,
    /// The ending for added lines: CRLF if most lines have it, else LF.
    nl: &'static str,
    lines: Vec<Line>,
}

impl Doc {
    fn parse(text: &str) -> Doc {
        let (bom, body) = match text.strip_prefix(BOM) {
            Some(body) => (true, body),
            None => (false, text),
        };
        let (mut crlf, mut lf) = (0usize, 0usize);
        let lines = body
            .split_inclusive('\n')
            .map(|piece| {
                let (text, end) = if let Some(t) = piece.strip_suffix("\r\n") {
                    crlf += 1;
                    (t, "\r\n")
                } else if let Some(t) = piece.strip_suffix('\n') {
                    lf += 1;
                    (t, "\n")
                } else {
                    (piece, "")
                };
                Line {
                    text: text.to_owned(),
                    end,
                }
            })
            .collect();
        Doc {
            bom,
            nl: if crlf > lf { "\r\n" } else { "\n" },
            lines,
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        if self.bom {
            out.push(BOM);
        }
        for line in &self.lines {
            out.push_str(&line.text);
            out.push_str(if line.end.is_empty() {
                self.nl
            } else {
                line.end
            });
        }
        out
    }

    fn kind(&self, i: usize) -> Kind<'_> {
        classify(&self.lines[i].text)
    }

    fn value_at(&self, i: usize) -> Option<&str> {
        match self.kind(i) {
            Kind::Setting { value, .. } => Some(value),
            _ => None,
        }
    }

    fn scopes(&self) -> Vec<Scope> {
        let mut filters = Filters::default();
        let mut block = 0;
        self.lines
            .iter()
            .map(|line| {
                if let Kind::Section(name) = classify(&line.text) {
                    filters.enter(name);
                    block += 1;
                }
                Scope {
                    block,
                    section: filters.section().map(str::to_owned),
                }
            })
            .collect()
    }

    /// Indices of lines setting `key` whose section satisfies `in_scope`, ascending.
    fn lines_setting(&self, key: &str, in_scope: impl Fn(Option<&str>) -> bool) -> Vec<usize> {
        let scopes = self.scopes();
        (0..self.lines.len())
            .filter(|&i| matches!(self.kind(i), Kind::Setting { key: k, .. } if k == key))
            .filter(|&i| in_scope(scopes[i].section.as_deref()))
            .collect()
    }

    /// Deletes the lines at `indices` (ascending).
    fn delete(&mut self, indices: &[usize]) {
        for &i in indices.iter().rev() {
            self.lines.remove(i);
        }
    }

    fn insert(&mut self, at: usize, text: String) {
        self.lines.insert(at, Line { text, end: self.nl });
    }

    fn set(&mut self, section: &str, key: &str, value: &str) {
        let hits = self.lines_setting(key, |s| s == Some(section));
        if REPEATABLE_KEYS.contains(&key) {
            if !hits.iter().any(|&i| self.value_at(i) == Some(value)) {
                self.append(section, format_line(key, value));
            }
            return;
        }
        match hits.split_last() {
            Some((&last, earlier)) => {
                self.lines[last].text = format_line(key, value);
                self.delete(earlier);
            }
            None => self.append(section, format_line(key, value)),
        }
    }

    /// Adds `line` to the file's last block if it is `section`'s, else in a new block at the end.
    fn append(&mut self, section: &str, line: String) {
        let scopes = self.scopes();
        if let Some(last) = scopes.last()
            && last.section.as_deref() == Some(section)
        {
            let start = scopes
                .iter()
                .position(|s| s.block == last.block)
                .unwrap_or(0);
            // After the block's last non-blank line, so trailing blank lines stay at the end.
            let at = (start..self.lines.len())
                .rev()
                .find(|&i| self.kind(i) != Kind::Blank)
                .map_or(start, |i| i + 1);
            self.insert(at, line);
            return;
        }
        let end = self.lines.len();
        if self
            .lines
            .last()
            .is_some_and(|l| classify(&l.text) != Kind::Blank)
        {
            self.insert(end, String::new());
        }
        let end = self.lines.len();
        self.insert(end, format!("[{section}]"));
        self.insert(end + 1, line);
    }

    /// Like [`Doc::set`], but a key the section lacks goes into the section's last existing block
    /// (after its last setting) rather than a new block. Only correct when no later line outside
    /// the section can override it, which [`confine_key`] guarantees.
    fn place(&mut self, section: &str, key: &str, value: &str) {
        if !self.lines_setting(key, |s| s == Some(section)).is_empty() {
            self.set(section, key, value);
            return;
        }
        let scopes = self.scopes();
        let Some(block) = scopes
            .iter()
            .rev()
            .find(|s| s.section.as_deref() == Some(section))
            .map(|s| s.block)
        else {
            self.set(section, key, value);
            return;
        };
        let in_block: Vec<usize> = (0..self.lines.len())
            .filter(|&i| scopes[i].block == block)
            .collect();
        let at = in_block
            .iter()
            .rev()
            .find(|&&i| matches!(self.kind(i), Kind::Setting { .. } | Kind::Section(_)))
            .map_or_else(|| in_block.first().copied().unwrap_or(0), |&i| i + 1);
        self.insert(at, format_line(key, value));
    }
}

/// A Raspberry Pi model, as far as config.txt's model filters tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Model {
    /// Raspberry Pi 4 Model B (`pi4`).
    Pi4,
    /// Raspberry Pi 400 (`pi400`); also matches `[pi4]`.
    Pi400,
    /// Compute Module 4 (`cm4`); also matches `[pi4]`.
    Cm4,
    /// Raspberry Pi 3 Model B (`pi3`).
    Pi3,
    /// Raspberry Pi 3 Model B+ or A+ (`pi3+`); also matches `[pi3]`.
    Pi3Plus,
    /// Raspberry Pi 2 Model B (`pi2`).
    Pi2,
    /// Raspberry Pi Zero without wireless (`pi0`); a Zero W would also match `[pi0w]`.
    Pi0,
    /// Raspberry Pi Zero 2 W (`pi02`); also matches `[pi0]`.
    Pi02,
    /// Raspberry Pi 5 (`pi5`).
    Pi5,
}

impl Model {
    /// Every model, in the order of the enum.
    pub const ALL: [Model; 9] = [
        Model::Pi4,
        Model::Pi400,
        Model::Cm4,
        Model::Pi3,
        Model::Pi3Plus,
        Model::Pi2,
        Model::Pi0,
        Model::Pi02,
        Model::Pi5,
    ];

    /// The model's name as [`FromStr`] takes it (`pi4`, `pi3+`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Model::Pi4 => "pi4",
            Model::Pi400 => "pi400",
            Model::Cm4 => "cm4",
            Model::Pi3 => "pi3",
            Model::Pi3Plus => "pi3+",
            Model::Pi2 => "pi2",
            Model::Pi0 => "pi0",
            Model::Pi02 => "pi02",
            Model::Pi5 => "pi5",
        }
    }

    /// Whether the model filter `[filter]` applies to this model.
    fn matches_filter(self, filter: &str) -> bool {
        use Model::*;
        match filter {
            "pi2" => self == Pi2,
            "pi3" => matches!(self, Pi3 | Pi3Plus),
            "pi3+" => self == Pi3Plus,
            "pi4" => matches!(self, Pi4 | Pi400 | Cm4),
            "pi400" => self == Pi400,
            "cm4" => self == Cm4,
            "pi0" => matches!(self, Pi0 | Pi02),
            "pi02" => self == Pi02,
            "pi5" => self == Pi5,
            // none, and models this enum does not name (pi1, cm3, cm4s, pi0w, cm5, pi500, ...).
            _ => false,
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A model name [`Model::from_str`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown Raspberry Pi model {0:?}; expected one of pi4, pi400, cm4, pi3, pi3+, pi2, pi0, pi02, pi5"
)]
pub struct UnknownModel(pub String);

impl FromStr for Model {
    type Err = UnknownModel;

    fn from_str(s: &str) -> Result<Model, UnknownModel> {
        Model::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownModel(s.to_owned()))
    }
}

/// One setting in force, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The key (`kernel`, `dtoverlay`, `hdmi_mode:1`, ...).
    pub key: String,
    /// The value as written (for space-form keys, everything after the key).
    pub value: String,
    /// The file the line is in, as named to the reader (`config.txt`, `usercfg.txt`).
    pub file: String,
    /// The line number in that file, from 1.
    pub line: usize,
}

/// The settings a model ends up with, as computed by [`effective`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effective {
    /// Final settings in the order of the lines they came from; a key appears once, except keys
    /// in [`REPEATABLE_KEYS`], which appear once per line.
    pub settings: Vec<Setting>,
    /// What could not be evaluated at build time or was skipped (missing or looping includes,
    /// hardware-dependent filters, lines that are not settings), each prefixed with `file:line`.
    pub warnings: Vec<String>,
}

impl Effective {
    /// The value in force for `key` (for repeatable keys, the last one); `None` if unset.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .rev()
            .find(|s| s.key == key)
            .map(|s| s.value.as_str())
    }

    /// Every value in force for `key`, in order (several only for repeatable keys).
    pub fn values(&self, key: &str) -> Vec<&str> {
        self.settings
            .iter()
            .filter(|s| s.key == key)
            .map(|s| s.value.as_str())
            .collect()
    }

    fn record(&mut self, setting: Setting) {
        if !REPEATABLE_KEYS.contains(&setting.key.as_str()) {
            self.settings.retain(|s| s.key != setting.key);
        }
        self.settings.push(setting);
    }
}

/// One `key=value   # file:line` line per setting (space-form keys as `key value`), the comments
/// aligned; then one `# warning: ...` line per warning.
impl fmt::Display for Effective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self
            .settings
            .iter()
            .map(|s| format_line(&s.key, &s.value))
            .collect();
        let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
        for (line, s) in lines.iter().zip(&self.settings) {
            writeln!(f, "{line:<width$}   # {}:{}", s.file, s.line)?;
        }
        for w in &self.warnings {
            writeln!(f, "# warning: {w}")?;
        }
        Ok(())
    }
}

/// Evaluates config.txt for `model` the way the firmware does.
///
/// `read` returns a boot-partition file's text by name (`None` if missing); `root_name` is the file
/// to start from, normally `config.txt`. Filters: `[all]` resets them all, model filters replace
/// each other, other filter types (`[HDMI:0]`, `[EDID=...]`, `[gpio4=1]`, `[0x1234abcd]`,
/// `[tryboot]`, ...) combine with them and cannot be known at build time, so they are treated as
/// not matching and recorded in the warnings. `include FILE` under a matching filter reads that
/// file at that point with the filter state carried through; a missing file or an include loop is
/// a warning. Later lines win for ordinary keys; repeatable keys accumulate.
///
/// Includes are bounded, so a crafted boot partition cannot make the evaluation take forever
/// (`include` twice per file, forty files deep, is 2^40 files): at most [`MAX_INCLUDE_DEPTH`]
/// files deep and [`MAX_INCLUDES`] includes in all; past either, an include is skipped with a
/// warning.
pub fn effective(
    root_name: &str,
    read: &dyn Fn(&str) -> Option<String>,
    model: Model,
) -> Effective {
    let mut eval = Eval {
        read,
        model,
        filters: Filters::default(),
        stack: Vec::new(),
        included: 0,
        out: Effective::default(),
    };
    match read(root_name) {
        Some(text) => eval.file(root_name, &text),
        None => eval.out.warnings.push(format!("{root_name}: not found")),
    }
    eval.out
}

/// How deep includes may nest (config.txt itself is depth 1).
pub const MAX_INCLUDE_DEPTH: usize = 16;
/// How many includes one evaluation reads in all.
pub const MAX_INCLUDES: usize = 256;

struct Eval<'r> {
    read: &'r dyn Fn(&str) -> Option<String>,
    model: Model,
    filters: Filters,
    /// Files being read, outermost first, to refuse include loops.
    stack: Vec<String>,
    /// Includes read so far.
    included: usize,
    out: Effective,
}

impl Eval<'_> {
    fn file(&mut self, name: &str, text: &str) {
        self.stack.push(name.to_owned());
        let body = text.strip_prefix(BOM).unwrap_or(text);
        for (n, raw) in body.lines().enumerate() {
            let line = n + 1;
            match classify(raw) {
                Kind::Blank | Kind::Comment => {}
                Kind::Section(filter) => {
                    self.filters.enter(filter);
                    if filter != "all" && !MODEL_FILTERS.contains(&filter) {
                        self.out.warnings.push(format!(
                            "{name}:{line}: [{filter}] depends on the hardware at boot; its lines are treated as not applying"
                        ));
                    }
                }
                Kind::Other => self.out.warnings.push(format!(
                    "{name}:{line}: not a setting, ignored: {}",
                    raw.trim()
                )),
                Kind::Setting { .. } if !self.filters.matches(self.model) => {}
                Kind::Setting {
                    key: "include",
                    value,
                } => self.include(value, name, line),
                Kind::Setting { key, value } => self.out.record(Setting {
                    key: key.to_owned(),
                    value: value.to_owned(),
                    file: name.to_owned(),
                    line,
                }),
            }
        }
        self.stack.pop();
    }

    fn include(&mut self, target: &str, from: &str, line: usize) {
        if self.stack.iter().any(|f| f == target) {
            self.out.warnings.push(format!(
                "{from}:{line}: include {target} would loop; skipped"
            ));
            return;
        }
        if self.stack.len() >= MAX_INCLUDE_DEPTH {
            self.out.warnings.push(format!(
                "{from}:{line}: include {target}: more than {MAX_INCLUDE_DEPTH} files deep; skipped"
            ));
            return;
        }
        if self.included >= MAX_INCLUDES {
            self.out.warnings.push(format!(
                "{from}:{line}: include {target}: more than {MAX_INCLUDES} includes in all; skipped"
            ));
            return;
        }
        self.included += 1;
        match (self.read)(target) {
            Some(text) => self.file(target, &text),
            None => self.out.warnings.push(format!(
                "{from}:{line}: include {target}: file not found; skipped"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn includes_are_bounded_in_depth_and_number() {
        // Each file includes the next one twice: 2^40 reads unbounded.
        let mut files: Vec<(String, String)> = (0..40)
            .map(|i| {
                (
                    format!("f{i}.txt"),
                    format!("k{i}=1\ninclude f{0}.txt\ninclude f{0}.txt\n", i + 1),
                )
            })
            .collect();
        files.push(("config.txt".into(), "include f0.txt\n".into()));
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        let e = eval(&refs, Model::Pi4);
        assert!(
            e.warnings
                .iter()
                .any(|w| w.contains("more than 16 files deep")),
            "{e}"
        );
        assert!(
            e.warnings
                .iter()
                .any(|w| w.contains("more than 256 includes in all")),
            "{e}"
        );
        assert_eq!(e.get("k0"), Some("1"));
    }

    fn eval(files: &[(&str, &str)], model: Model) -> Effective {
        let files: HashMap<String, String> = files
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        effective("config.txt", &|name| files.get(name).cloned(), model)
    }

    #[test]
    fn replaces_last_in_section_and_drops_earlier_duplicates() {
        let text = "[pi4]\narm_freq=1500\n[all]\narm_freq=1\n[pi4]\n# c\narm_freq=1800\n\n[pi3]\n";
        assert_eq!(
            set(text, "pi4", "arm_freq", "2000"),
            "[pi4]\n[all]\narm_freq=1\n[pi4]\n# c\narm_freq=2000\n\n[pi3]\n"
        );
    }

    #[test]
    fn appends_to_final_block_or_new_block() {
        assert_eq!(
            set("a=1\n[pi4]\nb=2\n\n", "pi4", "c", "3"),
            "a=1\n[pi4]\nb=2\nc=3\n\n"
        );
        assert_eq!(
            set("# only a comment", "pi4", "c", "3"),
            "# only a comment\n\n[pi4]\nc=3\n"
        );
        assert_eq!(set("[all]\n", "all", "c", "3"), "[all]\nc=3\n");
        assert_eq!(set("", "all", "c", "3"), "[all]\nc=3\n");
        assert_eq!(
            set("[pi4]\nx=1\n[pi3]\n", "pi4", "c", "3"),
            "[pi4]\nx=1\n[pi3]\n\n[pi4]\nc=3\n"
        );
    }

    #[test]
    fn lines_before_any_filter_are_section_all() {
        assert_eq!(set("a=1\n[pi4]\n", "all", "a", "2"), "a=2\n[pi4]\n");
        assert_eq!(remove("a=1\n[pi4]\na=3\n", "all", "a"), "[pi4]\na=3\n");
    }

    #[test]
    fn space_form_and_repeatable_keys() {
        let once = set("[all]\n", "all", "initramfs", "initrd.img followkernel");
        assert_eq!(once, "[all]\ninitramfs initrd.img followkernel\n");
        let text = "[all]\ndtoverlay=dwc2\n[cm4]\ndtoverlay=dwc2,dr_mode=host\n";
        assert_eq!(set(text, "cm4", "dtoverlay", "dwc2,dr_mode=host"), text);
        assert_eq!(
            set(text, "cm4", "dtoverlay", "dwc2"),
            format!("{text}dtoverlay=dwc2\n")
        );
        assert_eq!(
            set(text, "all", "include", "extra.txt"),
            format!("{text}\n[all]\ninclude extra.txt\n")
        );
    }

    #[test]
    fn combined_filter_blocks_are_left_alone() {
        let text = "[pi4]\n[HDMI:0]\nhdmi_mode=1\n[all]\n";
        assert_eq!(remove(text, "pi4", "hdmi_mode"), text);
        assert_eq!(remove(text, "HDMI:0", "hdmi_mode"), text);
        assert_eq!(
            remove("[HDMI:0]\nhdmi_mode=1\n", "HDMI:0", "hdmi_mode"),
            "[HDMI:0]\n"
        );
    }

    #[test]
    fn refuses_unwritable_settings() {
        let text = "[all]\na=1";
        for (section, key, value) in [
            ("all", "a", "2\nb=3"),
            ("all", "a", "2\r"),
            ("all", "a", " 2"),
            ("all", "a=b", "2"),
            ("all", "", "2"),
            ("all", "#a", "2"),
            ("pi4]\n[all", "a", "2"),
            ("", "a", "2"),
            ("all", "initramfs", ""),
        ] {
            assert!(!is_writable(section, key, value));
            assert_eq!(set(text, section, key, value), text);
        }
        assert!(is_writable("all", "a", ""));
    }

    #[test]
    fn keeps_crlf_bom_and_adds_final_newline() {
        let text = "\u{feff}# x\r\n[pi4]\r\narm_freq=1500";
        assert_eq!(
            set(text, "pi4", "over_voltage", "6"),
            "\u{feff}# x\r\n[pi4]\r\narm_freq=1500\r\nover_voltage=6\r\n"
        );
        assert_eq!(remove("a=1\nb=2", "all", "x"), "a=1\nb=2\n");
        assert_eq!(remove("", "all", "x"), "");
    }

    #[test]
    fn confine_key_moves_value_into_sections() {
        let text = "[pi4]\nkernel=k4\n\n[pi3]\nkernel=k3\n\n[all]\ndta=0x3\n";
        let out = confine_key(text, "dta", &["pi3", "pi0"]);
        assert_eq!(
            out,
            "[pi4]\nkernel=k4\n\n[pi3]\nkernel=k3\ndta=0x3\n\n[all]\n\n[pi0]\ndta=0x3\n"
        );
        assert_eq!(confine_key(&out, "dta", &["pi3", "pi0"]), out);
        assert_eq!(eval(&[("config.txt", &out)], Model::Pi4).get("dta"), None);
        assert_eq!(
            eval(&[("config.txt", &out)], Model::Pi02).get("dta"),
            Some("0x3")
        );
    }

    #[test]
    fn confine_key_keeps_a_later_section_value() {
        let text = "[all]\ndta=1\n[pi3]\ndta=2\n[pi2]\ndta=0\n[all]\n";
        assert_eq!(
            confine_key(text, "dta", &["pi3", "pi2"]),
            "[all]\n[pi3]\ndta=2\n[pi2]\ndta=0\n[all]\n"
        );
        let text = "[pi3]\ndta=2\n[all]\ndta=1\n";
        assert_eq!(confine_key(text, "dta", &["pi3"]), "[pi3]\ndta=1\n[all]\n");
    }

    #[test]
    fn confine_key_moves_only_values_that_applied() {
        let text = "[all]\ndta=1\n[pi4]\ndta=4\n[pi3]\nx=1\n[pi3+]\n[pi02]\ndta=2\n[all]\n";
        assert_eq!(
            confine_key(text, "dta", &["pi3", "pi3+", "pi0", "pi1"]),
            "[all]\n[pi4]\n[pi3]\nx=1\ndta=1\n[pi3+]\ndta=1\n[pi02]\n[all]\n\n[pi0]\ndta=1\n\n[pi1]\ndta=1\n"
        );
        assert!(covers("pi3", "pi3+") && covers("pi4", "cm4") && covers("pi0", "pi02"));
        assert!(!covers("pi3+", "pi3") && !covers("pi02", "pi0") && !covers("HDMI:0", "pi4"));
    }

    #[test]
    fn filters_and_models() {
        let cfg = "a=all\n[pi4]\nb=pi4\n[pi3]\nb=pi3\n[pi3+]\nc=plus\n[pi0]\nd=zero\n[pi02]\nd=zero2\n[none]\ne=none\n[cm4]\nb=cm4\n[all]\nz=1\n";
        let b = |m: Model| eval(&[("config.txt", cfg)], m).get("b").map(str::to_owned);
        assert_eq!(b(Model::Pi4).as_deref(), Some("pi4"));
        assert_eq!(b(Model::Pi400).as_deref(), Some("pi4"));
        assert_eq!(b(Model::Cm4).as_deref(), Some("cm4"));
        assert_eq!(b(Model::Pi3).as_deref(), Some("pi3"));
        assert_eq!(b(Model::Pi5), None);
        let plus = eval(&[("config.txt", cfg)], Model::Pi3Plus);
        assert_eq!((plus.get("b"), plus.get("c")), (Some("pi3"), Some("plus")));
        assert_eq!(eval(&[("config.txt", cfg)], Model::Pi3).get("c"), None);
        assert_eq!(
            eval(&[("config.txt", cfg)], Model::Pi02).get("d"),
            Some("zero2")
        );
        assert_eq!(
            eval(&[("config.txt", cfg)], Model::Pi0).get("d"),
            Some("zero")
        );
        for m in Model::ALL {
            let e = eval(&[("config.txt", cfg)], m);
            assert_eq!(
                (e.get("a"), e.get("z"), e.get("e")),
                (Some("all"), Some("1"), None)
            );
            assert!(e.warnings.is_empty(), "{:?}", e.warnings);
            assert_eq!(m.name().parse::<Model>(), Ok(m));
        }
        assert_eq!("pi6".parse::<Model>(), Err(UnknownModel("pi6".into())));
    }

    #[test]
    fn hardware_filters_do_not_match_and_are_reported() {
        let cfg = "[pi4]\n[HDMI:0]\nhdmi_mode=1\n[pi3]\nx=1\n[all]\ny=1\n[0x1234abcd]\nz=1\n";
        let e = eval(&[("config.txt", cfg)], Model::Pi3);
        assert_eq!(
            (e.get("hdmi_mode"), e.get("x"), e.get("y"), e.get("z")),
            (None, None, Some("1"), None)
        );
        assert_eq!(e.warnings.len(), 2, "{:?}", e.warnings);
        assert!(e.warnings[0].starts_with("config.txt:2: [HDMI:0]"));
    }

    #[test]
    fn includes_later_wins_repeatables_accumulate() {
        let e = eval(
            &[
                (
                    "config.txt",
                    "\u{feff}k=1\r\ndtparam=a\r\ninclude a.txt\r\ninclude gone.txt\r\n[pi3]\r\ninclude b.txt\r\nk=4\r\n",
                ),
                ("a.txt", "k=2\ndtparam=b\n[pi4]\ninclude config.txt\nk=3\n"),
                ("b.txt", "k=5\n"),
            ],
            Model::Pi4,
        );
        assert_eq!(e.get("k"), Some("3"));
        assert_eq!(e.values("dtparam"), ["a", "b"]);
        assert_eq!(
            e.warnings,
            [
                "a.txt:4: include config.txt would loop; skipped",
                "config.txt:4: include gone.txt: file not found; skipped",
            ]
        );
        assert_eq!(
            e.to_string(),
            "dtparam=a   # config.txt:2\ndtparam=b   # a.txt:2\nk=3         # a.txt:5\n\
             # warning: a.txt:4: include config.txt would loop; skipped\n\
             # warning: config.txt:4: include gone.txt: file not found; skipped\n"
        );
        let missing = effective("config.txt", &|_| None, Model::Pi4);
        assert_eq!(missing.warnings, ["config.txt: not found"]);
    }
}
