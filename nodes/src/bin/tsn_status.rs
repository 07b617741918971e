use clap::Parser;
use tsn_nodes::status::{fetch, render, StatusOpts};

#[tokio::main]
async fn main() {
    let opts = StatusOpts::parse();
    tsn_nodes::common::init_tracing("warn");
    match fetch(&opts).await {
        Ok(t) => print!("{}", render(&t)),
        Err(e) => {
            eprintln!("tsn_status: {e:#}");
            std::process::exit(1);
        }
    }
}
