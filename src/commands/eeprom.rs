//! `pi-image eeprom`: the SD card image that updates a Pi 4's bootloader EEPROM.

use crate::bootconf::eeprom::BootOrder;
use crate::build::eeprom as card;
use crate::cli::EepromArgs;
use crate::profile::EepromSpec;

/// Write the EEPROM update card.
pub fn eeprom(args: EepromArgs) -> anyhow::Result<()> {
    let spec = EepromSpec {
        boot_order: BootOrder::parse(&args.boot_order)
            .map_err(|e| anyhow::anyhow!("--boot-order: {e}"))?,
        settings: args
            .set
            .iter()
            .map(|s| card::parse_setting(s).map_err(|e| anyhow::anyhow!("--set: {e}")))
            .collect::<anyhow::Result<_>>()?,
        firmware: args.firmware,
        recovery: args.recovery,
    };
    let epoch = super::source_date_epoch()?;
    let files = card::update_files(&spec, epoch)?;
    let written = card::write_card(&files, &args.out, epoch)?;
    println!(
        "{}  {} MiB  BOOT_ORDER={} ({})  pieeprom.upd sha256 {}",
        written.path.display(),
        written.size >> 20,
        files.boot_order,
        files.boot_order.describe(),
        written.upd_sha256
    );
    Ok(())
}
