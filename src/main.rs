//! The `pi-image` command: parse the arguments (a usage error exits with 2), run the subcommand,
//! map its error to the exit status (see `commands::exit_status`).

use std::process::ExitCode;

use clap::Parser;

use pi_image::cli::{Cli, Command};
use pi_image::commands;

fn main() -> ExitCode {
    // First, before any thread exists: every thread inherits the blocked signals.
    if let Err(e) = pi_image::io::signal::install() {
        eprintln!("pi-image: error: cannot handle SIGINT/SIGTERM: {e}");
        return ExitCode::FAILURE;
    }
    let Cli { global, command } = Cli::parse();
    let result = match command {
        Command::Build(args) => commands::build(&global, args),
        Command::Extract(args) => commands::extract(args),
        Command::Fetch(args) => commands::fetch(&global, args),
        Command::Cache { action } => commands::cache(&global, action),
        Command::Inspect(args) => commands::inspect(args),
        Command::Nodes(args) => commands::nodes(&global, args),
        Command::Devices(args) => commands::devices(args),
        Command::Flash(args) => commands::flash(&global, args),
        Command::Verify(args) => commands::verify(args),
        Command::Bmap(args) => commands::bmap(args),
        Command::Eeprom(args) => commands::eeprom(args),
        Command::Preview(args) => commands::preview(&global, args),
        Command::Completions(args) => commands::completions(args),
        Command::Man(args) => commands::man(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pi-image: error: {}", commands::error_message(&e));
            ExitCode::from(commands::exit_status(&e))
        }
    }
}
