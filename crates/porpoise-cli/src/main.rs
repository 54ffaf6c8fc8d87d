//! The `porpoise` command: validate, apply, list and show workflows, start, list, inspect, stop,
//! pause and resume runs, read task logs — and `porpoise standalone`, which runs a master and a
//! worker in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use porpoise_cli::client::{self, DEFAULT_SERVER};
use porpoise_cli::standalone::{DEFAULT_DATA_DIR, DEFAULT_LISTEN, Standalone};
use porpoise_cli::{EXIT_INVALID, errln, fail, init_tracing, outln, shutdown_signal};
use porpoise_core::WorkflowSpec;

#[derive(Debug, Parser)]
#[command(name = "porpoise", version = porpoise_cli::VERSION, about = "Porpoise: a distributed workflow scheduler")]
struct Cli {
    /// The master to talk to.
    #[arg(long, global = true, env = "PORPOISE_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    /// The API token to send (`porpoise token create` makes them; standalone on loopback needs
    /// none).
    #[arg(long, global = true, env = "PORPOISE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The cluster CA's certificate, to check an `https://` server.
    #[arg(long, global = true, env = "PORPOISE_TLS_CA")]
    tls_ca: Option<PathBuf>,
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
    /// Starts a run of a workflow (or --count runs alike) and prints each run id on a line.
    Run {
        /// The workflow's name.
        name: String,
        /// A run parameter, name=value; repeatable. Overrides the spec's params.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Waits for the runs to end: exit 0 if every one succeeded, 1 otherwise. The server
        /// answers as each run ends (no polling).
        #[arg(long)]
        wait: bool,
        /// How many runs to start, all alike, in one call (1 to 1000).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
        /// The run's priority (highest, high, medium, low, lowest) instead of the workflow's.
        #[arg(long)]
        priority: Option<String>,
    },
    /// Runs a workflow once per date of a range (backfill), in order, one at a time unless
    /// --parallel; prints each run's id and date. `backfill status ID` shows its progress.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Backfill {
        #[command(subcommand)]
        status: Option<BackfillCommand>,
        /// The workflow's name.
        #[arg(required = true)]
        name: Option<String>,
        /// The first date, YYYY-MM-DD.
        #[arg(long, required = true)]
        from: Option<String>,
        /// The last date, YYYY-MM-DD (included).
        #[arg(long, required = true)]
        to: Option<String>,
        /// One run a day at 00:00 even when the workflow has a schedule (else its fire times).
        #[arg(long)]
        daily: bool,
        /// How many dates run at once.
        #[arg(long, default_value_t = 1)]
        parallel: u32,
        /// Newest date first.
        #[arg(long)]
        reverse: bool,
        /// Go on after a date fails (otherwise the dates not started are stopped).
        #[arg(long)]
        keep_going: bool,
        /// A run parameter, name=value; repeatable.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
    },
    /// Shows a run and every task instance in it.
    Status {
        run_id: i64,
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Prints the log of a task instance's latest attempt.
    Logs { task_instance_id: i64 },
    /// Stops a run: its running tasks are killed, nothing new starts, it ends `stopped`.
    Stop { run_id: i64 },
    /// Pauses a run: nothing new starts, running tasks finish, it ends `paused`.
    Pause { run_id: i64 },
    /// Resumes a paused or stopped run where it was: what succeeded is not run again.
    Resume { run_id: i64 },
    /// Runs an ended run again, keeping its id and history: its failed (and stopped) tasks,
    /// or with --from a task and everything downstream of it, as new attempts.
    Rerun {
        run_id: i64,
        /// The failed and stopped tasks (the default).
        #[arg(long, conflicts_with = "from")]
        failed: bool,
        /// This task and everything downstream of it.
        #[arg(long, value_name = "TASK")]
        from: Option<String>,
    },
    /// Work with task instances.
    Task {
        #[command(subcommand)]
        command: TaskCommand,
    },
    /// Work with runs.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Work with task groups: named limits on how many of their tasks run at once.
    Taskgroup {
        #[command(subcommand)]
        command: TaskGroupCommand,
    },
    /// Work with API tokens (admin): who may read, operate or administer through this master.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Makes a cluster CA and node certificates for mutual TLS between masters and workers.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Work with schedules: when a workflow runs by itself.
    Schedule {
        #[command(subcommand)]
        command: ScheduleCommand,
    },
    /// Prints a completion script for SHELL (bash, zsh, fish, elvish, powershell), e.g.
    /// `porpoise completions bash > /etc/bash_completion.d/porpoise`.
    Completions { shell: clap_complete::Shell },
    /// Runs a master and a worker in this process, on SQLite, with no other service.
    Standalone {
        /// Where the database and task logs live.
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Where the CLI reaches this instance (`--server http://HOST:PORT`).
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// How many tasks run at once.
        #[arg(long, default_value_t = 16)]
        slots: u32,
        /// The only users tasks may run as (their spec's `tenant`), comma-separated; any
        /// existing user but root when unset.
        #[arg(long, value_delimiter = ',')]
        tenants: Option<Vec<String>>,
        /// Lets tasks run as root (a `root` tenant, or no tenant when standalone runs as root).
        #[arg(long, env = "PORPOISE_ALLOW_ROOT_TASKS")]
        allow_root_tasks: bool,
    },
}

#[derive(Debug, Subcommand)]
enum WorkflowCommand {
    /// Checks workflow spec files without a server; prints a summary of each valid one.
    Validate {
        /// The spec files (YAML); `-` reads standard input.
        #[arg(short = 'f', long = "file", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
    /// Validates and stores workflow specs on the server (a changed spec makes a new version).
    Apply {
        /// The spec files (YAML); `-` reads standard input.
        #[arg(short = 'f', long = "file", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
    /// Lists the workflows on the server, newest version of each.
    List {
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Prints a stored workflow spec as it was applied (the newest version unless --version).
    Show {
        name: String,
        #[arg(long)]
        version: Option<i32>,
        /// Prints the name, version and spec as JSON instead of the spec's YAML.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TaskCommand {
    /// Kills a task instance (on its worker if it runs there): it ends `killed`, and its run
    /// fails as for a task failure.
    Kill { task_instance_id: i64 },
    /// Marks a task instance that failed, was stopped or was killed successful
    /// (`forced-success`): its run goes on as if it had succeeded.
    MarkSuccess { task_instance_id: i64 },
}

#[derive(Debug, Subcommand)]
enum BackfillCommand {
    /// Shows a backfill's state and each of its runs.
    Status {
        backfill_id: i64,
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ScheduleCommand {
    /// Gives a workflow a schedule (one its spec does not set).
    Create {
        /// The workflow's name.
        name: String,
        /// A cron expression: 5 fields (minute first) or 6 (second first); `L`, `W`, `#`,
        /// names and @daily-style nicknames.
        #[arg(long)]
        cron: String,
        /// The IANA time zone the expression is read in (default UTC).
        #[arg(long)]
        timezone: Option<String>,
        /// No fire time before this (RFC 3339, or a date or date and time in the time zone).
        #[arg(long)]
        start: Option<String>,
        /// No fire time after this.
        #[arg(long)]
        end: Option<String>,
        /// What happens to fire times missed while no master was up: none, latest (default), all.
        #[arg(long)]
        catchup: Option<String>,
    },
    /// Lists the schedules with their next fire time.
    List {
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Prints a workflow's schedule as JSON.
    Show {
        name: String,
        /// Prints JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stops a schedule from firing until it is resumed.
    Pause { name: String },
    /// Lets a paused schedule fire again, from now on.
    Resume { name: String },
    /// Deletes a workflow's schedule.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
enum TaskGroupCommand {
    /// Creates a task group with this many slots.
    Create {
        name: String,
        #[arg(long)]
        slots: i32,
        #[arg(long)]
        description: Option<String>,
    },
    /// Lists the task groups with their slots in use and their waiting tasks.
    List {
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Changes a task group's slots or description (fewer slots take effect as tasks end).
    Update {
        name: String,
        #[arg(long)]
        slots: Option<i32>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Deletes a task group no task uses.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Makes the cluster CA: DIR/ca.pem (every node's --tls-ca) and DIR/ca.key.
    Ca {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Makes DIR/NAME.pem and DIR/NAME.key for a master or a worker, signed by DIR/ca.*.
    Node {
        name: String,
        #[arg(long, value_enum)]
        role: porpoise_cli::cert::Role,
        #[arg(long)]
        dir: PathBuf,
        /// A host name or IP address the node is reached at; repeatable.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Makes a token and prints it once (it is stored only hashed).
    Create {
        name: String,
        /// viewer (reads), operator (also runs and controls), admin (also applies workflows and
        /// manages task groups, schedules and tokens).
        #[arg(long)]
        role: String,
    },
    /// Lists the tokens: names, roles, when made.
    List {
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Deletes a token: it stops working within seconds.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// Lists runs, newest first.
    List {
        /// Only runs of this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// Only runs in this state (submitted, running, paused, success, failure, stopped, …).
        #[arg(long)]
        state: Option<String>,
        /// At most this many runs (at most 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = &cli.command {
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut <Cli as clap::CommandFactory>::command(), "porpoise", &mut script);
        return match porpoise_cli::output::bytes(&script) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => e.exit(),
        };
    }
    if let Command::Workflow { command: WorkflowCommand::Validate { files } } = &cli.command {
        return validate(files);
    }
    if let Command::Cert { command } = &cli.command {
        let done = match command {
            CertCommand::Ca { dir } => porpoise_cli::cert::ca(dir),
            CertCommand::Node { name, role, dir, hosts } => porpoise_cli::cert::node(dir, name, *role, hosts),
        };
        return match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => e.exit(),
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(1, format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> ExitCode {
    let server = &client::Server { addr: cli.server.clone(), token: cli.token.clone(), tls_ca: cli.tls_ca.clone() };
    let result = match cli.command {
        Command::Workflow { command: WorkflowCommand::Validate { .. } } => Ok(()),
        Command::Workflow { command: WorkflowCommand::Apply { files } } => client::apply(server, &files).await,
        Command::Workflow { command: WorkflowCommand::List { json } } => client::list(server, json).await,
        Command::Run { name, params, wait, priority, count } => {
            client::run(server, &name, &params, wait, priority.as_deref(), count).await
        }
        Command::Backfill { status: Some(BackfillCommand::Status { backfill_id, json }), .. } => {
            porpoise_cli::schedule::backfill_status(server, backfill_id, json).await
        }
        Command::Backfill { status: None, name, from, to, daily, parallel, reverse, keep_going, params } => {
            let request = porpoise_cli::schedule::NewBackfill {
                name: name.unwrap_or_default(),
                from: from.unwrap_or_default(),
                to: to.unwrap_or_default(),
                daily,
                parallel,
                reverse,
                keep_going,
                params,
            };
            porpoise_cli::schedule::backfill(server, request).await
        }
        Command::Status { run_id, json } => client::status(server, run_id, json).await,
        Command::Logs { task_instance_id } => client::logs(server, task_instance_id).await,
        Command::Stop { run_id } => client::control(server, run_id, client::Control::Stop).await,
        Command::Pause { run_id } => client::control(server, run_id, client::Control::Pause).await,
        Command::Resume { run_id } => client::control(server, run_id, client::Control::Resume).await,
        Command::Rerun { run_id, failed, from } => client::rerun(server, run_id, failed, from.as_deref()).await,
        Command::Task { command: TaskCommand::Kill { task_instance_id } } => {
            client::kill_task(server, task_instance_id).await
        }
        Command::Task { command: TaskCommand::MarkSuccess { task_instance_id } } => {
            client::mark_success(server, task_instance_id).await
        }
        Command::Taskgroup { command } => match command {
            TaskGroupCommand::Create { name, slots, description } => {
                client::task_group_set(server, true, &name, Some(slots), description).await
            }
            TaskGroupCommand::Update { name, slots, description } => {
                client::task_group_set(server, false, &name, slots, description).await
            }
            TaskGroupCommand::List { json } => client::task_groups(server, json).await,
            TaskGroupCommand::Delete { name } => client::task_group_delete(server, &name).await,
        },
        Command::Token { command } => match command {
            TokenCommand::Create { name, role } => client::token_create(server, &name, &role).await,
            TokenCommand::List { json } => client::tokens(server, json).await,
            TokenCommand::Delete { name } => client::token_delete(server, &name).await,
        },
        Command::Schedule { command } => match command {
            ScheduleCommand::Create { name, cron, timezone, start, end, catchup } => {
                let new = porpoise_cli::schedule::NewSchedule { cron, timezone, start, end, catchup };
                porpoise_cli::schedule::create(server, &name, new).await
            }
            ScheduleCommand::List { json } => porpoise_cli::schedule::list(server, json).await,
            ScheduleCommand::Show { name, json } => porpoise_cli::schedule::show(server, &name, json).await,
            ScheduleCommand::Pause { name } => porpoise_cli::schedule::pause(server, &name, true).await,
            ScheduleCommand::Resume { name } => porpoise_cli::schedule::pause(server, &name, false).await,
            ScheduleCommand::Delete { name } => porpoise_cli::schedule::delete(server, &name).await,
        },
        Command::Runs { command: RunsCommand::List { workflow, state, limit, json } } => {
            client::runs(server, workflow.as_deref(), state.as_deref(), limit, json).await
        }
        Command::Workflow { command: WorkflowCommand::Show { name, version, json } } => {
            client::show(server, &name, version, json).await
        }
        Command::Standalone { data_dir, listen, slots, tenants, allow_root_tasks } => {
            let tenants = porpoise_worker::tenant::TenantPolicy { allowed: tenants, allow_root: allow_root_tasks };
            return standalone(data_dir, listen, slots, tenants).await;
        }
        Command::Completions { .. } | Command::Cert { .. } => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.exit(),
    }
}

async fn standalone(
    data_dir: PathBuf,
    listen: SocketAddr,
    slots: u32,
    tenants: porpoise_worker::tenant::TenantPolicy,
) -> ExitCode {
    init_tracing();
    if slots == 0 {
        return fail(EXIT_INVALID, "--slots must be at least 1");
    }
    if let Some(problem) = tenants.allowed.iter().flatten().find_map(|t| porpoise_core::spec::check_tenant(t).err()) {
        return fail(EXIT_INVALID, format!("invalid setting --tenants: {problem}"));
    }
    let s = match Standalone::start(data_dir.clone(), listen, slots, tenants).await {
        Ok(s) => s,
        Err(e) => return fail(1, e),
    };
    // a closed standard output must not stop the instance: these lines are only a courtesy
    let _ = outln!("porpoise standalone: master on http://{} (use --server http://{})", s.master.addr, s.master.addr);
    let _ = outln!("porpoise standalone: worker on {} with {slots} slots", s.worker.addr);
    let _ = outln!("porpoise standalone: data in {}", data_dir.display());
    shutdown_signal().await;
    s.stop().await;
    ExitCode::SUCCESS
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for file in files {
        match validate_file(file) {
            Ok(summary) => {
                if let Err(e) = outln!("{summary}") {
                    return e.exit();
                }
            }
            Err(message) => {
                errln!("{message}");
                ok = false;
            }
        }
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_INVALID) }
}

/// A one-line summary of a valid spec, or the error message for an invalid or unreadable one.
fn validate_file(file: &std::path::Path) -> Result<String, String> {
    let (shown, source) = client::read_spec(file)?;
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
