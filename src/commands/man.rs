//! `pi-image man`: man pages, generated from the clap definitions (help texts, examples, exit
//! statuses).

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::{Cli, ManArgs};

/// Print `pi-image.1` on stdout, or write a page per command into `--dir`.
pub fn man(args: ManArgs) -> anyhow::Result<()> {
    // `pi-image help` is clap's, and has no page of its own (as generate_to has it).
    let cmd = Cli::command().disable_help_subcommand(true);
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(cmd, &dir))
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
        }
        None => clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .context("writing the man page")?,
    }
    Ok(())
}
