use clap::Parser;
use tsn_nodes::status::{fetch, problems, render, render_json, StatusOpts};

/// Exit status when the coordinator answered but some cluster cannot serve fully.
const UNHEALTHY: i32 = 2;

#[tokio::main]
async fn main() {
    let opts = StatusOpts::parse();
    tsn_nodes::common::init_tracing("warn");
    match fetch(&opts).await {
        Ok(t) => {
            if opts.json {
                print!("{}", render_json(&t));
            } else {
                print!("{}", render(&t));
            }
            let problems = problems(&t);
            if !problems.is_empty() {
                if !opts.json {
                    for p in &problems {
                        eprintln!("tsn_status: {p}");
                    }
                }
                std::process::exit(UNHEALTHY);
            }
        }
        Err(e) => {
            eprintln!("tsn_status: {e:#}");
            std::process::exit(1);
        }
    }
}
