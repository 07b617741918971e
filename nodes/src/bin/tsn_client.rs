use clap::Parser;
use tsn_nodes::client::{run, words, ClientOpts};

#[tokio::main]
async fn main() {
    // Without arguments, the original printed its calling convention and exited.
    if std::env::args_os().len() <= 1 {
        print!("{}", words::CALLING_CONVENTION);
        println!("\n(tsn_client --help lists every option.)");
        std::process::exit(0);
    }
    let opts = ClientOpts::parse();
    // The client's stdout is for the user; logs go to stderr and default to warnings.
    let filter = if opts.common.log == "info" {
        "warn"
    } else {
        opts.common.log.as_str()
    };
    tsn_nodes::common::init_tracing(filter);
    let code = run(opts).await;
    // Exit without waiting for the threads that read stdin.
    std::process::exit(code);
}
