//! `pi-image completions`: a shell completion script, generated from the clap definitions.

use std::io::Write;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, CompletionsArgs};

/// Print the completion script for `args.shell` on stdout.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "pi-image", &mut script);
    let mut script = String::from_utf8(script).context("the generated script is not UTF-8")?;
    if args.shell == Shell::Bash {
        // clap_complete's bash script names the subcommands' states `pi__image__subcmd__flash`
        // where it sets them but `pi__subcmd__image__subcmd__flash` where it matches them (the
        // hyphen of a bin name escaped twice; clap-rs/clap#6421), so no subcommand option
        // would complete. One spelling makes them agree; a fixed clap_complete makes it a no-op.
        script = script.replace("pi__subcmd__image", "pi__image");
    }
    std::io::stdout()
        .write_all(script.as_bytes())
        .context("writing the completion script")
}
