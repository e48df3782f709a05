//! The Raspberry Pi 4 EEPROM bootloader image (`pieeprom-*.bin`): its sections, replacing the
//! `bootconf.txt` section as `rpi-eeprom-config --config` does, the bootloader settings
//! (`BOOT_ORDER` and free-form keys) and the `pieeprom.sig` text the update needs.
//!
//! Pure functions over bytes and text: no I/O, so everything is tested on synthetic images.
//! [`crate::build::eeprom`] reads the files and writes the update card.
//!
//! The format (see `rpi-eeprom-config` in raspberrypi/rpi-eeprom): sections start on 8-byte
//! boundaries with a big-endian magic (masked with `0xfffff00f` it equals `0x55aaf00f`) and a
//! big-endian length of what follows the 8-byte header; the walk stops at magic 0 or
//! `0xffffffff`. A file section (magic `0x55aaf11f`) holds a 12-byte NUL-padded name, 4 zero
//! bytes and the content; its length is 12 + 4 + content length. The last 4 KiB of the image is
//! reserved for the bootloader.

use std::fmt;

use sha2::{Digest, Sha256};

/// Magic of a section header after masking with [`MAGIC_MASK`].
pub const MAGIC: u32 = 0x55aa_f00f;
/// Mask applied to a section's magic before comparing it with [`MAGIC`].
pub const MAGIC_MASK: u32 = 0xffff_f00f;
/// Magic of a modifiable file section (`bootconf.txt`, public keys).
pub const FILE_MAGIC: u32 = 0x55aa_f11f;
/// Magic of a padding section.
pub const PAD_MAGIC: u32 = 0x55aa_feef;
/// The name of the bootloader configuration section.
pub const BOOTCONF: &str = "bootconf.txt";
/// Image sizes `rpi-eeprom-config` accepts: 512 KiB (Pi 4) and 2 MiB (Pi 5).
pub const VALID_IMAGE_SIZES: [usize; 2] = [512 * 1024, 2 * 1024 * 1024];
/// The erase sector; the image's last sector is the bootloader's scratch space.
pub const ERASE_ALIGN: usize = 4096;
/// Bytes of a file section before its content: magic, length, name (the 4 zero bytes that
/// follow are counted separately, as `rpi-eeprom-config` does).
const FILE_HDR_LEN: usize = 20;
const FILENAME_LEN: usize = 12;
/// Offset of a file section's content from its header.
const CONTENT_OFFSET: usize = FILE_HDR_LEN + 4;
/// The largest file content `rpi-eeprom-config` accepts: one erase sector minus the header.
pub const MAX_FILE_SIZE: usize = ERASE_ALIGN - FILE_HDR_LEN;

/// Errors reading or changing an EEPROM image or its settings. They do not name the file (these
/// functions see only bytes); [`crate::build::eeprom`] adds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EepromError {
    /// The image is not one of the sizes the bootloader uses.
    #[error(
        "{len} bytes is not the size of a bootloader EEPROM image (expected 524288 for a Pi 4 or 2097152 for a Pi 5)"
    )]
    BadSize {
        /// The image's length.
        len: usize,
    },
    /// A section header has a magic that is not a section magic.
    #[error("corrupt EEPROM image: no section magic at offset {offset:#x} (found {magic:#010x})")]
    Corrupt {
        /// Where the section should start.
        offset: usize,
        /// What was found there.
        magic: u32,
    },
    /// A section reaches past the end of the image.
    #[error(
        "corrupt EEPROM image: the section at offset {offset:#x} claims {length} bytes, past the end of the image"
    )]
    SectionPastEnd {
        /// The section's offset.
        offset: usize,
        /// Its length field.
        length: u32,
    },
    /// The image has no file section of that name.
    #[error("the EEPROM image has no {name} section (is this a pieeprom-*.bin?)")]
    NoSection {
        /// The section looked for.
        name: String,
    },
    /// The new content does not fit.
    #[error("{name} of {len} bytes does not fit: at most {max} bytes fit in its section")]
    TooLarge {
        /// The section.
        name: String,
        /// The content's length.
        len: usize,
        /// The most that fits.
        max: usize,
    },
    /// A `BOOT_ORDER` value is invalid.
    #[error("BOOT_ORDER '{value}': {reason}")]
    BootOrder {
        /// The value as given.
        value: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// A free-form setting is invalid.
    #[error("bootloader setting '{key}': {reason}")]
    Setting {
        /// The key as given.
        key: String,
        /// What is wrong and what was expected.
        reason: String,
    },
}

type Result<T> = std::result::Result<T, EepromError>;

/// One section of an EEPROM image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The section's magic.
    pub magic: u32,
    /// Offset of its header in the image.
    pub offset: usize,
    /// Its length field: bytes after the 8-byte header.
    pub length: u32,
    /// The file name of a file section ([`FILE_MAGIC`]), NULs removed.
    pub name: Option<String>,
}

impl Section {
    /// One past the last byte of the section (not counting alignment padding).
    pub fn end(&self) -> usize {
        self.offset + 8 + self.length as usize
    }
}

fn be32(image: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&image[at..at + 4]);
    u32::from_be_bytes(b)
}

/// The sections of `image`, in order, as `rpi-eeprom-config` walks them.
pub fn sections(image: &[u8]) -> Result<Vec<Section>> {
    if !VALID_IMAGE_SIZES.contains(&image.len()) {
        return Err(EepromError::BadSize { len: image.len() });
    }
    let mut out = Vec::new();
    let mut offset = 0usize;
    while offset + 8 <= image.len() {
        let magic = be32(image, offset);
        let length = be32(image, offset + 4);
        if magic == 0 || magic == 0xffff_ffff {
            break;
        }
        if magic & MAGIC_MASK != MAGIC {
            return Err(EepromError::Corrupt { offset, magic });
        }
        let end = offset
            .checked_add(8 + length as usize)
            .filter(|&e| e <= image.len())
            .ok_or(EepromError::SectionPastEnd { offset, length })?;
        let name = if magic == FILE_MAGIC {
            if (length as usize) < FILENAME_LEN + 4 {
                return Err(EepromError::SectionPastEnd { offset, length });
            }
            let raw = &image[offset + 8..offset + FILE_HDR_LEN];
            Some(String::from_utf8_lossy(raw).replace('\0', ""))
        } else {
            None
        };
        out.push(Section {
            magic,
            offset,
            length,
            name,
        });
        offset = (end + 7) & !7;
    }
    Ok(out)
}

/// The content of the file section `name` of `image`.
pub fn read_file<'a>(image: &'a [u8], name: &str) -> Result<&'a [u8]> {
    let all = sections(image)?;
    let s = find(&all, name)?;
    Ok(&image[s.offset + CONTENT_OFFSET..s.end()])
}

fn find<'s>(all: &'s [Section], name: &str) -> Result<&'s Section> {
    all.iter()
        .find(|s| s.magic == FILE_MAGIC && s.name.as_deref() == Some(name))
        .ok_or_else(|| EepromError::NoSection {
            name: name.to_string(),
        })
}

/// A copy of `image` with the file section `name` holding `content`, exactly as
/// `rpi-eeprom-config` writes it: the length field and content replaced, 0xff up to the next
/// 8-byte boundary, then up to the next non-padding section (or, for the last section, up to the
/// reserved last 4 KiB) a padding section of 0xff, or plain 0xff bytes when the section is the
/// last one or the gap is too small for a header. Everything else is left as it was.
///
/// One deliberate difference: `rpi-eeprom-config` checks the fit 4 bytes short (it forgets the
/// 4 zero bytes after the name), so it accepts content up to 4 bytes too long and writes it and
/// its 0xff alignment padding over the start of the next section or the reserved sector; here
/// such content is refused.
pub fn replace_file(image: &[u8], name: &str, content: &[u8]) -> Result<Vec<u8>> {
    let all = sections(image)?;
    let index = all
        .iter()
        .position(|s| s.magic == FILE_MAGIC && s.name.as_deref() == Some(name))
        .ok_or_else(|| EepromError::NoSection {
            name: name.to_string(),
        })?;
    let s = &all[index];
    let is_last = index + 1 == all.len();
    // The next section that is not padding (padding is rewritten); the reserved sector bounds
    // the last one.
    let next = all[index + 1..]
        .iter()
        .find(|n| n.magic != PAD_MAGIC)
        .map_or(image.len() - ERASE_ALIGN, |n| n.offset);
    let content_start = s.offset + CONTENT_OFFSET;
    let max = next.saturating_sub(content_start).min(MAX_FILE_SIZE);
    // The content plus 0xff up to the 8-byte boundary must end by the next section.
    if content.len() > MAX_FILE_SIZE || (content_start + content.len()).next_multiple_of(8) > next {
        // The largest content whose aligned end still fits.
        let aligned_max = (next & !7).saturating_sub(content_start).min(max);
        return Err(EepromError::TooLarge {
            name: name.to_string(),
            len: content.len(),
            max: aligned_max,
        });
    }
    let mut out = image.to_vec();
    let length =
        u32::try_from(content.len() + FILENAME_LEN + 4).map_err(|_| EepromError::TooLarge {
            name: name.to_string(),
            len: content.len(),
            max,
        })?;
    out[s.offset + 4..s.offset + 8].copy_from_slice(&length.to_be_bytes());
    out[content_start..content_start + content.len()].copy_from_slice(content);
    let mut pad_start = content_start + content.len();
    let aligned = pad_start.next_multiple_of(8);
    out[pad_start..aligned].fill(0xff);
    pad_start = aligned;
    let mut pad_bytes = next - pad_start;
    // A padding section keeps the walk going to the next section; the last section needs none
    // (the walk stops at the 0xff), which also keeps read/write round trips byte-identical.
    if pad_bytes > 8 && !is_last {
        pad_bytes -= 8;
        out[pad_start..pad_start + 4].copy_from_slice(&PAD_MAGIC.to_be_bytes());
        // pad_bytes < image size (at most 2 MiB), so it fits in 32 bits.
        out[pad_start + 4..pad_start + 8].copy_from_slice(&(pad_bytes as u32).to_be_bytes());
        pad_start += 8;
    }
    out[pad_start..pad_start + pad_bytes].fill(0xff);
    Ok(out)
}

/// What one `BOOT_ORDER` digit makes the bootloader try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    /// 1: the SD card.
    Sd,
    /// 2: network (PXE/TFTP).
    Network,
    /// 3: RPIBOOT, booting over USB from a host (usbboot).
    Rpiboot,
    /// 4: USB mass storage.
    Usb,
    /// 5: USB mass storage through the BCM2711's own USB controller (CM4 only).
    BcmUsb,
    /// 6: NVMe (CM4).
    Nvme,
    /// 7: HTTP boot.
    Http,
    /// e: stop and show the error pattern.
    Stop,
    /// f: restart from the first boot mode.
    Restart,
}

impl BootMode {
    fn from_digit(d: char) -> Option<BootMode> {
        Some(match d.to_ascii_lowercase() {
            '1' => BootMode::Sd,
            '2' => BootMode::Network,
            '3' => BootMode::Rpiboot,
            '4' => BootMode::Usb,
            '5' => BootMode::BcmUsb,
            '6' => BootMode::Nvme,
            '7' => BootMode::Http,
            'e' => BootMode::Stop,
            'f' => BootMode::Restart,
            _ => return None,
        })
    }

    /// The short name used in descriptions.
    pub fn name(self) -> &'static str {
        match self {
            BootMode::Sd => "SD",
            BootMode::Network => "network",
            BootMode::Rpiboot => "RPIBOOT",
            BootMode::Usb => "USB",
            BootMode::BcmUsb => "BCM-USB-MSD",
            BootMode::Nvme => "NVMe",
            BootMode::Http => "HTTP",
            BootMode::Stop => "stop",
            BootMode::Restart => "restart",
        }
    }
}

/// The digits the bootloader documentation defines, for error messages.
const BOOT_DIGITS: &str =
    "1 SD, 2 network, 3 RPIBOOT, 4 USB, 5 BCM-USB-MSD, 6 NVMe, 7 HTTP, e stop, f restart";

/// A validated `BOOT_ORDER`: the boot modes in the order they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOrder {
    /// Tried first to last (the value's digits read right to left).
    pub modes: Vec<BootMode>,
    /// The value as written to bootconf.txt (`0x` and lower-case digits).
    pub value: String,
}

impl BootOrder {
    /// Parse a `BOOT_ORDER` strictly: `0x` and 1 to 8 hex digits, each a documented boot mode.
    /// `0` (the deprecated "SD card detect") is refused, as are digits left of `e` (stop) or
    /// `f` (restart), which the bootloader never reaches.
    pub fn parse(value: &str) -> Result<BootOrder> {
        let err = |reason: String| EepromError::BootOrder {
            value: value.to_string(),
            reason,
        };
        let digits = value
            .strip_prefix("0x")
            .or_else(|| value.strip_prefix("0X"))
            .ok_or_else(|| err("expected a hex value starting with 0x, e.g. 0xf14".into()))?;
        if digits.is_empty() || digits.len() > 8 {
            return Err(err(format!(
                "expected 1 to 8 hex digits after 0x, found {}",
                digits.chars().count()
            )));
        }
        let mut modes = Vec::new();
        // Read right to left: the lowest digit is tried first.
        for (i, c) in digits.chars().rev().enumerate() {
            if let Some(last @ (BootMode::Stop | BootMode::Restart)) = modes.last() {
                return Err(err(format!(
                    "'{c}' is never tried: the digit right of it is {} ({}), which ends the order",
                    if *last == BootMode::Stop { 'e' } else { 'f' },
                    last.name()
                )));
            }
            let mode = match c {
                '0' => {
                    return Err(err(
                        "digit 0 (SD card detect) is deprecated; use f (restart) to retry".into(),
                    ));
                }
                _ => BootMode::from_digit(c)
                    .ok_or_else(|| err(format!("'{c}' (digit {} from the right) is not a boot mode (expected {BOOT_DIGITS})", i + 1)))?,
            };
            modes.push(mode);
        }
        Ok(BootOrder {
            modes,
            value: format!("0x{}", digits.to_ascii_lowercase()),
        })
    }

    /// What the order means, e.g. "USB, then SD, then restart".
    pub fn describe(&self) -> String {
        self.modes
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", then ")
    }
}

impl fmt::Display for BootOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

/// Check a free-form bootloader setting (`POWER_OFF_ON_HALT=1`): the key is upper-case letters,
/// digits and `_` starting with a letter, the value one line of printable ASCII. `BOOT_ORDER`
/// has its own option, where it is checked strictly.
pub fn check_setting(key: &str, value: &str) -> Result<()> {
    let err = |reason: &str| EepromError::Setting {
        key: key.to_string(),
        reason: reason.to_string(),
    };
    let key_ok = key.starts_with(|c: char| c.is_ascii_uppercase())
        && key
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !key_ok {
        return Err(err(
            "not a bootloader setting name (expected upper-case letters, digits and '_', e.g. POWER_OFF_ON_HALT)",
        ));
    }
    if key == "BOOT_ORDER" {
        return Err(err(
            "set the boot order with --boot-order / boot_order, where it is checked",
        ));
    }
    if value.is_empty() || !value.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return Err(err(
            "the value must be one non-empty line of printable ASCII",
        ));
    }
    Ok(())
}

/// The new `bootconf.txt`: `existing` (the firmware's default configuration) with each of
/// `settings` set in its unconditional part — the lines before any `[section]` and the `[all]`
/// sections. A key already defined there gets the new value in place of its first definition
/// (later unconditional ones are removed, so nothing overrides it); a new key goes at the end of
/// the first `[all]` section, or of the top lines when there is none. Comments, other keys and
/// conditional sections (`[gpio4=1]`, `[pi5]`) are kept as they were.
pub fn bootconf(existing: &str, settings: &[(String, String)]) -> String {
    let is_header = |l: &str| l.trim_start().starts_with('[');
    let is_all = |l: &str| l.trim().eq_ignore_ascii_case("[all]");
    let setting_of = |l: &str| {
        let key = l.split_once('=').map(|(k, _)| k.trim())?;
        settings.iter().position(|(k, _)| k == key)
    };
    let line = |i: usize| format!("{}={}", settings[i].0, settings[i].1);

    let mut out: Vec<String> = Vec::new();
    let mut placed = vec![false; settings.len()];
    // Where new keys go: after the last non-blank line of the first [all] section, or of the
    // unconditional lines at the top when there is no [all].
    let mut insert_at: Option<usize> = None;
    let mut top_end = 0usize;
    let mut unconditional = true;
    let mut in_first_all = false;
    let mut seen_all = false;
    for l in existing.lines() {
        if is_header(l) {
            unconditional = is_all(l);
            in_first_all = unconditional && !seen_all;
            seen_all |= unconditional;
            out.push(l.to_string());
            if in_first_all {
                insert_at = Some(out.len());
            }
            continue;
        }
        match setting_of(l).filter(|_| unconditional) {
            Some(i) if placed[i] => continue,
            Some(i) => {
                placed[i] = true;
                out.push(line(i));
            }
            None => out.push(l.to_string()),
        }
        if !l.trim().is_empty() {
            if in_first_all {
                insert_at = Some(out.len());
            } else if !seen_all && unconditional {
                top_end = out.len();
            }
        }
    }
    let at = insert_at.unwrap_or(top_end);
    let new = (0..settings.len()).filter(|&i| !placed[i]).map(line);
    out.splice(at..at, new);
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// The `pieeprom.sig` the bootloader checks `pieeprom.upd` against: its sha256 in hex, then
/// `ts: <unix time>` (from `SOURCE_DATE_EPOCH`, so the card is reproducible).
pub fn signature(upd: &[u8], epoch: i64) -> String {
    format!("{}\nts: {epoch}\n", crate::io::hex(&Sha256::digest(upd)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_order_reads_right_to_left() {
        let o = BootOrder::parse("0xf14").unwrap();
        assert_eq!(o.describe(), "USB, then SD, then restart");
        assert_eq!(
            BootOrder::parse("0xF41").unwrap().describe(),
            "SD, then USB, then restart"
        );
        assert_eq!(BootOrder::parse("0xF41").unwrap().value, "0xf41");
        assert_eq!(BootOrder::parse("0x1").unwrap().describe(), "SD");
        assert_eq!(
            BootOrder::parse("0xe6421").unwrap().describe(),
            "SD, then network, then USB, then NVMe, then stop"
        );
    }

    #[test]
    fn boot_order_is_strict() {
        for (bad, says) in [
            ("f14", "starting with 0x"),
            ("0x", "1 to 8 hex digits"),
            ("0x1234567f4", "1 to 8 hex digits"),
            ("0xf91", "'9' (digit 2 from the right) is not a boot mode"),
            ("0xfg1", "'g'"),
            ("0xf01", "deprecated"),
            ("0x4f1", "never tried"),
            ("0x 14", "' '"),
        ] {
            let e = BootOrder::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn settings_are_checked() {
        assert!(check_setting("POWER_OFF_ON_HALT", "1").is_ok());
        assert!(check_setting("power_off", "1").is_err());
        assert!(check_setting("BOOT_ORDER", "0xf14").is_err());
        assert!(check_setting("X", "a\nb").is_err());
        assert!(check_setting("X", "").is_err());
    }

    #[test]
    fn bootconf_replaces_unconditional_keys_and_keeps_the_rest() {
        let stock = "[all]\nBOOT_UART=0\nWAKE_ON_GPIO=1\nPOWER_OFF_ON_HALT=0\n\n";
        let set = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            bootconf(
                stock,
                &set(&[("BOOT_ORDER", "0xf14"), ("POWER_OFF_ON_HALT", "1")])
            ),
            "[all]\nBOOT_UART=0\nWAKE_ON_GPIO=1\nPOWER_OFF_ON_HALT=1\nBOOT_ORDER=0xf14\n\n"
        );
        let cond = "# comment\nBOOT_ORDER=0x1\n[gpio4=1]\nBOOT_ORDER=0x2\n";
        assert_eq!(
            bootconf(cond, &set(&[("BOOT_ORDER", "0xf14")])),
            "# comment\nBOOT_ORDER=0xf14\n[gpio4=1]\nBOOT_ORDER=0x2\n"
        );
        assert_eq!(
            bootconf("", &set(&[("BOOT_ORDER", "0xf41")])),
            "BOOT_ORDER=0xf41\n"
        );
    }

    #[test]
    fn signature_is_sha256_and_timestamp() {
        assert_eq!(
            signature(b"", 1_662_033_600),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\nts: 1662033600\n"
        );
    }
}
