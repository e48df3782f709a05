pub mod cmdline;
pub mod configtxt;
pub mod eeprom;
