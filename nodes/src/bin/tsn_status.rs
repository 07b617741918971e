use clap::Parser;
use tsn_nodes::status::{
    fetch, group_problems, problems, render, render_group, render_json, watch, StatusOpts,
};

/// Exit status when the coordinator answered but some cluster cannot serve fully, or the
/// coordinator group has no leader.
const UNHEALTHY: i32 = 2;

#[tokio::main]
async fn main() {
    let opts = StatusOpts::parse();
    tsn_nodes::common::init_tracing("warn");
    if opts.watch {
        tokio::select! {
            r = watch(&opts) => if let Err(e) = r {
                eprintln!("tsn_status: {e:#}");
                std::process::exit(1);
            },
            _ = tsn_nodes::common::shutdown_signal() => {}
        }
        return;
    }
    match fetch(&opts).await {
        Ok((t, group)) => {
            if opts.json {
                print!("{}", render_json(&t, &group));
            } else {
                print!("{}", render(&t));
                print!("{}", render_group(&group));
            }
            let mut problems = problems(&t);
            problems.extend(group_problems(&group));
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
