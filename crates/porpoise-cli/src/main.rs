//! The `porpoise` command. Until the daemons exist it validates workflow specs offline;
//! client commands and `porpoise standalone` come with the master and the worker.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use porpoise_core::WorkflowSpec;

/// Exit code for input the user must fix (an invalid spec, a missing file, bad arguments).
const EXIT_INVALID: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "porpoise", version, about = "Porpoise: a distributed workflow scheduler")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with workflow definitions.
    Workflow {
        #[command(subcommand)]
        command: WorkflowCommand,
    },
}

#[derive(Debug, Subcommand)]
enum WorkflowCommand {
    /// Checks workflow spec files without a server; prints a summary of each valid one.
    Validate {
        /// The spec files (YAML).
        #[arg(short = 'f', long = "file", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Workflow { command: WorkflowCommand::Validate { files } } => validate(&files),
    }
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for file in files {
        match validate_file(file) {
            Ok(summary) => println!("{summary}"),
            Err(message) => {
                eprintln!("{message}");
                ok = false;
            }
        }
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_INVALID) }
}

/// A one-line summary of a valid spec, or the error message for an invalid or unreadable one.
fn validate_file(file: &PathBuf) -> Result<String, String> {
    let shown = file.display().to_string();
    let source = std::fs::read_to_string(file).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let spec = WorkflowSpec::parse(&shown, &source).map_err(|e| e.to_string())?;
    let dag = spec.dag();
    let roots: Vec<&str> = dag.roots().into_iter().map(|r| dag.name(r)).collect();
    Ok(format!(
        "{shown}: ok: workflow {}: {}, {}, {} ({})",
        spec.name,
        count(dag.len(), "task"),
        count(dag.edge_count(), "edge"),
        count(roots.len(), "root"),
        roots.join(", ")
    ))
}

fn count(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}
