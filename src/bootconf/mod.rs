//! The Raspberry Pi's boot configuration formats, as pure functions from text (or bytes) to text:
//! `config.txt` ([`configtxt`]), `cmdline.txt` ([`cmdline`]) and the EEPROM bootloader's
//! configuration section ([`eeprom`]).

pub mod cmdline;
pub mod configtxt;
pub mod eeprom;
