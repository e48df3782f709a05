//! The `pi-image` command: parse the arguments, run the subcommand, map its error to the exit
//! status.

use std::process::ExitCode;

use clap::Parser;

use pi_image::cli::{Cli, Command};
use pi_image::commands;

fn main() -> ExitCode {
    let Cli { global, command } = Cli::parse();
    let result = match command {
        Command::Build(args) => commands::build(&global, args),
        Command::Extract(args) => commands::extract(args),
        Command::Fetch(args) => commands::fetch(&global, args),
        Command::Cache { action } => commands::cache(&global, action),
        Command::Inspect(args) => commands::inspect(args),
        Command::Nodes => commands::nodes(&global),
        Command::Devices(args) => commands::devices(args),
        Command::Flash(args) => commands::flash(&global, args),
        Command::Verify(args) => commands::verify(args),
        Command::Bmap(args) => commands::bmap(args),
        Command::Eeprom(args) => commands::eeprom(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pi-image: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
