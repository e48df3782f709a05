//! The EEPROM update files (`recovery.bin`, `pieeprom.upd`, `pieeprom.sig`) from a
//! `pieeprom-*.bin` and the wanted bootloader settings, and `pi-image eeprom`'s small SD card
//! image holding only those three files (what Raspberry Pi Imager's "bootloader" images hold).
//!
//! On power-up a Pi 4 whose boot ROM finds `recovery.bin` in the first FAT partition of the SD
//! card runs it; it checks `pieeprom.upd` against the sha256 in `pieeprom.sig`, flashes it,
//! renames itself `recovery.000` and reboots.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::bootconf::eeprom::{self, BootOrder, EepromError};
use crate::image::PendingOutput;
use crate::image::bootfs::BootFsError;
use crate::image::bootfs::{BootFs, FatTimestamp};
use crate::image::partview::PartitionView;
use crate::io::{AtPath, PathError};
use crate::profile::EepromSpec;

/// Where the bootloader firmware is published, for the "no download yet" message.
pub const FIRMWARE_URL: &str =
    "https://github.com/raspberrypi/rpi-eeprom/tree/master/firmware-2711";

/// The three files, in the order they are written, as they are named on the card.
pub const UPDATE_FILES: [&str; 3] = ["recovery.bin", "pieeprom.upd", "pieeprom.sig"];

const SECTOR: u64 = 512;
/// The card's FAT partition starts at 1 MiB, as on Ubuntu's and Raspberry Pi's images.
const PART_START_LBA: u32 = 2048;
/// 64 MiB: FAT32 needs at least 65525 clusters, and fatfs picks 512-byte clusters at this size
/// (so about 130000 of them), with room to spare for the three files (under 1 MiB).
const PART_SECTORS: u32 = 131_072;
/// MBR type 0x0c: FAT32 with LBA addressing, what the boot ROM expects.
const FAT32_LBA: u8 = 0x0c;
/// The largest `recovery.bin` accepted (the real one is about 100 KB): a sanity bound so a
/// wrong file (an OS image) is caught before it is copied.
const MAX_RECOVERY: u64 = 4 << 20;

/// Why the EEPROM update files or the card could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EepromCardError {
    /// I/O on a named file failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// No firmware file was given, and downloading one is not built.
    #[error(
        "no EEPROM firmware given: downloading pieeprom-*.bin is not available yet; pass the \
         firmware (--firmware, or `firmware` in the profile's eeprom table) and its recovery.bin, \
         both from {FIRMWARE_URL}"
    )]
    NoFirmware,
    /// No `recovery.bin` was given.
    #[error(
        "{}: no recovery.bin given: pass the recovery.bin (--recovery, or `recovery` in the \
         profile's eeprom table) from the same rpi-eeprom release ({FIRMWARE_URL})",
        firmware.display()
    )]
    NoRecovery {
        /// The firmware that was given.
        firmware: PathBuf,
    },
    /// An input file is larger than what it claims to be can be.
    #[error("{}: {size} bytes is too large for {what}", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// What it should be.
        what: &'static str,
    },
    /// The firmware's sections or settings are not what the bootloader takes.
    #[error("{}: {source}", path.display())]
    Firmware {
        /// The firmware file.
        path: PathBuf,
        /// What is wrong.
        source: EepromError,
    },
    /// The firmware's `bootconf.txt` is not text.
    #[error("{}: its bootconf.txt is not text; is this a pieeprom-*.bin?", path.display())]
    BootconfNotText {
        /// The firmware file.
        path: PathBuf,
    },
    /// `recovery.bin` is empty.
    #[error("{}: recovery.bin is empty", path.display())]
    EmptyRecovery {
        /// The file.
        path: PathBuf,
    },
    /// The card's partition table could not be made.
    #[error("{}: {step} the partition table: {source}", path.display())]
    PartitionTable {
        /// The card image.
        path: PathBuf,
        /// `creating` or `writing`.
        step: &'static str,
        /// What mbrman said.
        source: mbrman::Error,
    },
    /// The card's FAT32 filesystem could not be made.
    #[error("{}: creating the FAT32 filesystem: {source}", path.display())]
    Format {
        /// The card image.
        path: PathBuf,
        /// What fatfs said.
        source: std::io::Error,
    },
    /// The card image could not be written.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// The card's filesystem could not be written.
    #[error(transparent)]
    BootFs(#[from] crate::image::bootfs::BootFsError),
}

/// The update files' contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateFiles {
    /// `recovery.bin`, copied as it is.
    pub recovery: Vec<u8>,
    /// `pieeprom.upd`: the firmware with the new `bootconf.txt`.
    pub upd: Vec<u8>,
    /// `pieeprom.sig`.
    pub sig: String,
    /// The `bootconf.txt` now inside `upd`.
    pub bootconf: String,
    /// The boot order it sets.
    pub boot_order: BootOrder,
}

impl UpdateFiles {
    /// (name on the card, content) for each of [`UPDATE_FILES`].
    pub fn files(&self) -> [(&'static str, &[u8]); 3] {
        [
            (UPDATE_FILES[0], &self.recovery),
            (UPDATE_FILES[1], &self.upd),
            (UPDATE_FILES[2], self.sig.as_bytes()),
        ]
    }
}

/// Parse a `KEY=VALUE` bootloader setting and check it ([`eeprom::check_setting`]).
pub fn parse_setting(s: &str) -> Result<(String, String), EepromError> {
    let (key, value) = s.split_once('=').ok_or_else(|| EepromError::Setting {
        key: s.to_string(),
        reason: "expected KEY=VALUE, e.g. POWER_OFF_ON_HALT=1".into(),
    })?;
    eeprom::check_setting(key, value)?;
    Ok((key.to_string(), value.to_string()))
}

/// Read `path`, refusing files over `max` bytes before reading them.
fn read_bounded(path: &Path, max: u64, what: &'static str) -> Result<Vec<u8>, EepromCardError> {
    let f = File::open(path).at(path)?;
    let size = f.metadata().at(path)?.len();
    if size > max {
        return Err(EepromCardError::TooLarge {
            path: path.to_owned(),
            size,
            what,
        });
    }
    let mut data = Vec::new();
    // Bounded again while reading, in case the file grows.
    f.take(max + 1).read_to_end(&mut data).at(path)?;
    if data.len() as u64 > max {
        return Err(EepromCardError::TooLarge {
            path: path.to_owned(),
            size: data.len() as u64,
            what,
        });
    }
    Ok(data)
}

/// Build the update files for `spec`: read the firmware, set `BOOT_ORDER` and the other
/// settings in its `bootconf.txt`, sign it with `ts: <epoch>`, read `recovery.bin`.
pub fn update_files(spec: &EepromSpec, epoch: i64) -> Result<UpdateFiles, EepromCardError> {
    let firmware = spec.firmware.as_ref().ok_or(EepromCardError::NoFirmware)?;
    let recovery_path = spec
        .recovery
        .as_ref()
        .ok_or_else(|| EepromCardError::NoRecovery {
            firmware: firmware.clone(),
        })?;
    let firmware_err = |source| EepromCardError::Firmware {
        path: firmware.clone(),
        source,
    };
    let max_image = eeprom::VALID_IMAGE_SIZES.iter().max().copied().unwrap_or(0) as u64;
    let image = read_bounded(
        firmware,
        max_image,
        "a bootloader EEPROM image (pieeprom-*.bin, 512 KiB)",
    )?;
    let current = eeprom::read_file(&image, eeprom::BOOTCONF).map_err(firmware_err)?;
    let current = std::str::from_utf8(current).map_err(|_| EepromCardError::BootconfNotText {
        path: firmware.clone(),
    })?;
    let mut settings = vec![("BOOT_ORDER".to_string(), spec.boot_order.value.clone())];
    for (k, v) in &spec.settings {
        eeprom::check_setting(k, v).map_err(firmware_err)?;
        settings.push((k.clone(), v.clone()));
    }
    let bootconf = eeprom::bootconf(current, &settings);
    let upd = eeprom::replace_file(&image, eeprom::BOOTCONF, bootconf.as_bytes())
        .map_err(firmware_err)?;
    let recovery = read_bounded(recovery_path, MAX_RECOVERY, "recovery.bin (about 100 KB)")?;
    if recovery.is_empty() {
        return Err(EepromCardError::EmptyRecovery {
            path: recovery_path.clone(),
        });
    }
    let sig = eeprom::signature(&upd, epoch);
    Ok(UpdateFiles {
        recovery,
        upd,
        sig,
        bootconf,
        boot_order: spec.boot_order.clone(),
    })
}

/// Write the three update files into the root of a FAT boot partition.
pub fn write_to<F: Read + Write + Seek>(
    fs: &BootFs<F>,
    files: &UpdateFiles,
) -> Result<(), BootFsError> {
    for (name, content) in files.files() {
        fs.write_bytes(name, content)?;
    }
    Ok(())
}

/// What [`write_card`] wrote.
#[derive(Debug, Clone)]
pub struct CardInfo {
    /// The image's final path.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// sha256 of `pieeprom.upd`, as in `pieeprom.sig`.
    pub upd_sha256: String,
}

/// Write `out`: an MBR with one FAT32 partition holding exactly the three update files.
/// Written to a temp file and renamed into place when complete; deterministic (disk and volume
/// ids derived from the files, every timestamp from `epoch`).
pub fn write_card(
    files: &UpdateFiles,
    out: &Path,
    epoch: i64,
) -> Result<CardInfo, EepromCardError> {
    let mut pending = PendingOutput::create(out)?;
    let temp = pending.temp_path().to_owned();
    let part_start = u64::from(PART_START_LBA) * SECTOR;
    let part_len = u64::from(PART_SECTORS) * SECTOR;
    let size = part_start + part_len;
    // Zero-filled and sparse: only the MBR and the filesystem's own blocks take space.
    pending.file().set_len(size).at(&temp)?;

    let digest = Sha256::digest(format!("pi-image eeprom card\0{}", files.sig));
    let disk_id = [digest[0], digest[1], digest[2], digest[3]];
    let volume_id = u32::from_le_bytes([digest[4], digest[5], digest[6], digest[7]]);

    let table_err = |step| {
        move |source| EepromCardError::PartitionTable {
            path: out.to_owned(),
            step,
            source,
        }
    };
    let mut mbr = mbrman::MBR::new_from(pending.file(), SECTOR as u32, disk_id)
        .map_err(table_err("creating"))?;
    mbr[1] = mbrman::MBRPartitionEntry {
        boot: mbrman::BOOT_INACTIVE,
        first_chs: mbrman::CHS::empty(),
        sys: FAT32_LBA,
        last_chs: mbrman::CHS::empty(),
        starting_lba: PART_START_LBA,
        sectors: PART_SECTORS,
    };
    pending.file().seek(SeekFrom::Start(0)).at(&temp)?;
    mbr.write_into(pending.file())
        .map_err(table_err("writing"))?;

    let handle = pending.file().try_clone().at(&temp)?;
    let view = || -> Result<PartitionView<File>, PathError> {
        PartitionView::new(handle.try_clone().at(&temp)?, part_start, part_len).at(&temp)
    };
    let options = fatfs::FormatVolumeOptions::new()
        .fat_type(fatfs::FatType::Fat32)
        .volume_id(volume_id)
        .volume_label(*b"PI-EEPROM  ");
    fatfs::format_volume(view()?, options).map_err(|source| EepromCardError::Format {
        path: out.to_owned(),
        source,
    })?;
    let fs = BootFs::open(view()?, FatTimestamp::from_unix(epoch))?;
    write_to(&fs, files)?;
    fs.unmount()?;

    let upd_sha256 = files.sig.lines().next().unwrap_or_default().to_string();
    let path = pending.commit()?;
    Ok(CardInfo {
        path,
        size,
        upd_sha256,
    })
}
