//! `kube-double [--listen ADDR] [--ready-delay-ms N] [--latency-ms N] [--kubeconfig FILE]`:
//! serves the Kubernetes API test double until Ctrl-C. Prints the URL; with
//! `--kubeconfig`, writes a kubeconfig pointing at it. See the library's
//! documentation for what it does and does not model.

use kube_double::{Config, KubeDouble};
use std::process::ExitCode;
use std::time::Duration;

#[tokio::main]
async fn main() -> ExitCode {
    let mut listen = "127.0.0.1:0".to_string();
    let mut config = Config::default();
    let mut kubeconfig = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "--listen" | "--ready-delay-ms" | "--latency-ms" | "--kubeconfig" => args.next(),
            "-h" | "--help" => {
                println!(
                    "usage: kube-double [--listen ADDR] [--ready-delay-ms N] [--latency-ms N] [--kubeconfig FILE]"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("kube-double: unknown argument `{other}`");
                return ExitCode::from(2);
            }
        };
        let Some(value) = value else {
            eprintln!("kube-double: `{arg}` needs a value");
            return ExitCode::from(2);
        };
        match arg.as_str() {
            "--listen" => listen = value,
            "--ready-delay-ms" => match value.parse() {
                Ok(ms) => config.ready_delay = Duration::from_millis(ms),
                Err(_) => {
                    eprintln!("kube-double: --ready-delay-ms takes milliseconds, not `{value}`");
                    return ExitCode::from(2);
                }
            },
            "--latency-ms" => match value.parse() {
                Ok(ms) => config.latency = Duration::from_millis(ms),
                Err(_) => {
                    eprintln!("kube-double: --latency-ms takes milliseconds, not `{value}`");
                    return ExitCode::from(2);
                }
            },
            _ => kubeconfig = Some(value),
        }
    }
    let addr = match listen.parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("kube-double: `{listen}` is not a socket address");
            return ExitCode::from(2);
        }
    };
    let double = match KubeDouble::bind(addr, config).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("kube-double: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = kubeconfig
        && let Err(e) = std::fs::write(&path, double.kubeconfig())
    {
        eprintln!("kube-double: cannot write {path}: {e}");
        return ExitCode::FAILURE;
    }
    println!("kube-double listening on {}", double.url());
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}
