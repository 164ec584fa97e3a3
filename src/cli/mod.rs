//! The command line: argument parsing (here), one file per command group that calls the
//! engine (`plan`, `state`, `cluster`, `catalog`, `workspace`, `fmt`), and how results look
//! on a terminal (`report`, `progress`; the renderers live in `render/`).

/// Prints a line to stdout; a closed stdout (`| head`) is not an error worth dying for in the
/// middle of an apply.
macro_rules! say {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout());
    }};
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// As [`say!`] without the line break.
macro_rules! say_inline {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

mod args;
mod catalog;
mod cluster;
mod console;
mod controller;
mod convert;
pub mod fmt;
mod plan;
mod progress;
mod report;
mod state;
mod workspace;

pub use args::*;

use crate::engine::store::BackendChange;
use std::path::PathBuf;

/// Exit codes (documented in docs/cli.md).
pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_CHANGES: i32 = 2;

/// Commands that start no agent, controller, job or shell of their own (what they start
/// would inherit [`crate::runtime::proc::without_huge_pages`]).
fn starts_no_process(command: &Command) -> bool {
    matches!(
        command,
        Command::Init { .. }
            | Command::Validate { .. }
            | Command::Fmt { .. }
            | Command::Convert { .. }
            | Command::Plan { .. }
            | Command::Show { .. }
            | Command::Output { .. }
            | Command::Console { .. }
            | Command::Version { .. }
            | Command::State { .. }
            | Command::Workspace { .. }
            | Command::ForceUnlock { .. }
            | Command::Status { .. }
            | Command::Logs { .. }
            | Command::Offers { .. }
            | Command::Catalog { .. }
            | Command::Graph { .. }
    )
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    crate::runtime::proc::default_sigpipe();
    // One TLS stack: rustls with aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // The HCL library panics on non-finite numbers; evaluation turns that into a diagnostic,
    // so its panic message would only be noise. Every other panic is reported as usual.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let from_hcl = info
            .location()
            .is_some_and(|l| l.file().contains("hcl-primitives") || l.file().contains("hcl-rs"));
        if !from_hcl {
            default_hook(info);
        }
    }));
    let args = normalize_args(std::env::args());
    let parsed = command()
        .try_get_matches_from(args)
        .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m));
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => {
            let text = single_dash(&e.render().to_string());
            if e.use_stderr() {
                eprint!("{text}");
                return EXIT_ERROR;
            }
            say_inline!("{text}");
            return EXIT_OK;
        }
    };
    if starts_no_process(&cli.command) {
        crate::runtime::proc::without_huge_pages();
    }
    let internal = match &cli.command {
        Command::Agent { cluster_dir, rank } => Some(crate::runtime::run_agent(cluster_dir, *rank)),
        Command::Link { cluster_dir, rank } => {
            Some(crate::runtime::link::run_link(cluster_dir, *rank))
        }
        Command::Runtime { cluster_dir } => {
            return match crate::runtime::link::serve_call(cluster_dir) {
                Ok(()) => EXIT_OK,
                Err(e) => {
                    eprintln!("skyform runtime: {e}");
                    e.exit_code()
                }
            };
        }
        _ => None,
    };
    if let Some(result) = internal {
        return match result {
            Ok(()) => EXIT_OK,
            Err(e) => {
                eprintln!("skyform runtime: {e}");
                EXIT_ERROR
            }
        };
    }
    let filter = match std::env::var("SKYFORM_LOG") {
        Err(_) => tracing_subscriber::EnvFilter::new("off"),
        Ok(spec) => tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("warning: SKYFORM_LOG={spec:?} is not a log filter ({e}); logging is off\nhint: use a level such as debug, or skyform=trace");
            tracing_subscriber::EnvFilter::new("off")
        }),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && !cli.no_color
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .try_init();
    // Generous stacks: unoptimised builds make deep async state machines.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 << 20)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return EXIT_ERROR;
        }
    };
    runtime.block_on(run(cli))
}

/// `skyform version`: as `terraform version` prints it.
fn version(json: bool) -> i32 {
    let platform = format!(
        "{}_{}",
        std::env::consts::OS,
        match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        }
    );
    let v = env!("CARGO_PKG_VERSION");
    if json {
        let doc = serde_json::json!({ "skyform_version": v, "platform": platform });
        say!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        say!("skyform v{v}\non {platform}");
    }
    EXIT_OK
}

/// A boolean environment setting: 1, true, yes or on (any case) mean yes.
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// Writes a document to stdout as one line of JSON, streamed (a plan can be large).
fn write_json_out<T: serde::Serialize>(value: &T) {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let _ = serde_json::to_writer(&mut out, value);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Runs one command: opens the engine on its directory and calls the command's file.
async fn run(cli: Cli) -> i32 {
    use crate::engine::{Engine, Error, Options};
    use crate::render::Style;
    use std::io::IsTerminal;
    use std::sync::Arc;

    let color = !cli.no_color
        && !env_flag("SKYFORM_NO_COLOR")
        && std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none();
    let style = Style { color };
    let json = match &cli.command {
        Command::Apply { run, .. } | Command::Destroy { run, .. } => run.json,
        _ => false,
    };
    let term = Arc::new(report::Terminal::new(style, json));
    // -chdir works as in Terraform: every relative path is taken from DIR.
    if let Some(d) = &cli.chdir
        && let Err(e) = std::env::set_current_dir(d)
    {
        term.failure(
            &Error::new(format!("cannot change to {}: {e}", d.display()))
                .hint("-chdir takes an existing directory"),
        );
        return EXIT_ERROR;
    }
    // Absolute, so paths recorded in state (sandboxes) do not depend on where skyform runs.
    let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let dir_of = |d: &Option<PathBuf>| d.as_ref().map_or_else(|| base.clone(), |d| base.join(d));
    let open = |dir: PathBuf, vars: &VarFlags| {
        Engine::open(
            Options {
                dir,
                workspace: cli.workspace.clone(),
                vars: crate::config::VarArgs {
                    vars: vars.vars.clone(),
                    var_files: vars.var_files.clone(),
                },
                agent_exe: None,
            },
            term.clone(),
        )
    };
    let none = VarFlags::default();
    let result = match &cli.command {
        Command::Init {
            dir,
            migrate_state,
            reconfigure,
            force_copy,
            input: _,
            lock,
            json,
        } => {
            let how = if *migrate_state {
                BackendChange::Migrate {
                    force_copy: *force_copy,
                    lock: lock.options(),
                }
            } else if *reconfigure {
                BackendChange::Reconfigure
            } else {
                BackendChange::Refuse
            };
            plan::init(&open(dir_of(dir), &none), how, *json).await
        }
        Command::Validate { dir, json, vars } => {
            plan::validate(&open(dir_of(dir), vars), &term, *json)
        }
        Command::Convert {
            files,
            out,
            json,
            managed,
        } => convert::run(files, out.as_deref(), *json, *managed),
        Command::Fmt {
            targets,
            list,
            write,
            diff,
            check,
            recursive,
        } => Ok(fmt::run(&fmt::FmtOptions {
            targets: targets.clone(),
            list: *list,
            write: *write,
            diff: *diff,
            check: *check,
            recursive: *recursive,
        })),
        Command::Version { json } => Ok(version(*json)),
        Command::Console { dir, vars } => plan::console(&open(dir_of(dir), vars), &term).await,
        Command::Plan {
            dir,
            flags,
            out,
            detailed_exitcode,
            json,
            format,
            destroy,
            parallelism: _,
            input: _,
            warnings,
        } => {
            term.set_compact_warnings(warnings.compact_warnings);
            let req = plan::PlanRequest {
                flags,
                out: out.as_deref(),
                detailed_exitcode: *detailed_exitcode || env_flag("SKYFORM_DETAILED_EXITCODE"),
                format: PlanFormat::pick(*format, *json),
                destroy: *destroy,
            };
            plan::plan(&open(dir_of(dir), &flags.vars), &term, req).await
        }
        Command::Apply {
            planfile,
            flags,
            destroy,
            auto_approve,
            input,
            run,
            wait,
            warnings,
        } => {
            term.set_compact_warnings(warnings.compact_warnings);
            // `apply DIR` is accepted as well as `apply PLANFILE`.
            let (dir, planfile) = match planfile {
                Some(p) if base.join(p).is_dir() => (base.join(p), None),
                other => (base.clone(), other.as_ref().map(|p| base.join(p))),
            };
            let req = plan::ApplyRequest {
                planfile: planfile.as_deref(),
                flags,
                auto_approve: *auto_approve,
                input: input.input,
                run,
                wait: *wait,
                destroy: *destroy,
            };
            plan::apply(&open(dir, &flags.vars), &term, req).await
        }
        Command::Destroy {
            dir,
            auto_approve,
            input,
            vars,
            target,
            refresh,
            lock,
            run,
            warnings,
        } => {
            term.set_compact_warnings(warnings.compact_warnings);
            let flags = PlanFlags {
                vars: vars.clone(),
                target: target.clone(),
                replace: Vec::new(),
                refresh: *refresh,
                refresh_only: false,
                lock: lock.clone(),
            };
            let req = plan::ApplyRequest {
                planfile: None,
                flags: &flags,
                auto_approve: *auto_approve,
                input: input.input,
                run,
                wait: false,
                destroy: true,
            };
            plan::apply(&open(dir_of(dir), vars), &term, req).await
        }
        Command::Show {
            planfile,
            json,
            format,
        } => {
            let planfile = planfile.as_ref().map(|p| base.join(p));
            let format = PlanFormat::pick(*format, *json);
            plan::show(
                &open(base.clone(), &none),
                &term,
                planfile.as_deref(),
                *json,
                format,
            )
            .await
        }
        Command::Output { name, json, raw } => {
            plan::output(&open(base.clone(), &none), name.as_deref(), *json, *raw).await
        }
        Command::State { command } => {
            state::state(&open(base.clone(), &none), command.clone()).await
        }
        Command::Workspace { command } => {
            workspace::workspace(&open(base.clone(), &none), command.clone()).await
        }
        Command::ForceUnlock { lock_id, force } => {
            state::force_unlock(&open(base.clone(), &none), &term, lock_id, *force).await
        }
        Command::Controller { command } => {
            controller::command(&open(base.clone(), &none), command).await
        }
        Command::Status { json } => cluster::status(&open(base.clone(), &none), *json).await,
        Command::Ssh { cluster, command } => {
            cluster::shell(&open(base.clone(), &none), cluster, command).await
        }
        Command::Stop { cluster, lock } => {
            cluster::stop_or_start(&open(base.clone(), &none), cluster, false, lock).await
        }
        Command::Start { cluster, lock } => {
            cluster::stop_or_start(&open(base.clone(), &none), cluster, true, lock).await
        }
        Command::Logs { address, follow } => {
            cluster::logs(&open(base.clone(), &none), address, *follow).await
        }
        Command::Graph { dir, format } => plan::graph(&open(dir_of(dir), &none), format),
        Command::Offers {
            request,
            all,
            json,
            catalog_dir,
        } => {
            catalog::offers(
                &open(base.clone(), &none),
                request,
                *all,
                *json,
                catalog_dir.clone(),
            )
            .await
        }
        Command::Catalog {
            command,
            catalog_dir,
        } => {
            let engine = open(base.clone(), &none);
            match command {
                CatalogCommand::List => catalog::list(&engine, catalog_dir.clone()),
                CatalogCommand::Update {
                    url,
                    clouds,
                    timeout,
                } => {
                    catalog::update(
                        &engine,
                        catalog_dir.clone(),
                        url.clone(),
                        clouds.clone(),
                        *timeout,
                    )
                    .await
                }
            }
        }
        Command::Agent { .. } | Command::Link { .. } | Command::Runtime { .. } => Ok(EXIT_OK),
    };
    result.unwrap_or_else(|e| {
        term.failure(&e);
        EXIT_ERROR
    })
}
