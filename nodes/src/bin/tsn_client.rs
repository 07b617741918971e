use clap::Parser;
use tsn_nodes::client::{run, ClientOpts};

#[tokio::main]
async fn main() {
    let opts = ClientOpts::parse();
    // The client's stdout is for the user; logs go to stderr and default to warnings.
    let filter = if opts.common.log == "info" {
        "warn"
    } else {
        opts.common.log.as_str()
    };
    tsn_nodes::common::init_tracing(filter);
    let code = run(opts).await;
    // Exit without waiting for the blocking stdin reader thread.
    std::process::exit(code);
}
