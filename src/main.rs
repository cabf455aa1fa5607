//! The `loopd` binary: parses the command line, then either runs the daemon in the role the
//! settings give, or acts as the client of a running daemon.

use clap::Parser;
use loopd::app::Application;
use loopd::cli::Cli;
use loopd::settings::Settings;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(cmd) = cli.command {
        return loopd::client::run(cmd);
    }
    let env: Vec<(String, String)> = std::env::vars().collect();
    let settings = match Settings::load(&cli.daemon.overrides(), &env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("loopd: {e}");
            return ExitCode::from(2);
        }
    };
    loopd::telemetry::init(&settings.log);
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        app.run_until_stopped().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loopd: {e}");
            ExitCode::FAILURE
        }
    }
}
