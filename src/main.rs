//! The `loopd` binary: parses the command line, then either runs the daemon in the role the
//! settings give, or acts as the client of a running daemon.

use clap::Parser;
use loopd::app::Application;
use loopd::cli::Cli;
use loopd::settings::Settings;
use std::process::ExitCode;

/// mimalloc instead of the system allocator: in a busy pool glibc's malloc and free took about a
/// quarter of the controller's CPU (bins consolidated, chunks unlinked, across the threads that
/// allocate and free a completion's buffers).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Start-up failures are one line (a multi-line message, e.g. from libpq, is joined).
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// loopd as ssh's `SSH_ASKPASS` program (see `workspace::remote`): ssh runs it with the prompt
/// as its only argument and the key's passphrase in the environment it set for the git command.
fn answer_askpass() -> Option<ExitCode> {
    let secret = std::env::var_os(loopd::workspace::remote::ASKPASS_SECRET_ENV)?;
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if args.len() != 1 {
        return None;
    }
    use std::io::Write;
    let mut out = std::io::stdout();
    let written = out
        .write_all(secret.as_encoded_bytes())
        .and_then(|()| out.write_all(b"\n"));
    Some(match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    })
}

fn main() -> ExitCode {
    if let Some(code) = answer_askpass() {
        return code;
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            eprintln!("{}", one_line(&e.to_string()));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    if let Some(cmd) = cli.command {
        return loopd::client::run(cmd);
    }
    let env: Vec<(String, String)> = std::env::vars().collect();
    let settings = match Settings::load(&cli.daemon.overrides(), &env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("loopd: {}", one_line(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    loopd::telemetry::init(&settings.log, settings.log_format);
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        app.run_until_stopped().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loopd: {}", one_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}
