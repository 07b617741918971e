use clap::Parser;
use tsn_nodes::admin::{run, AdminOpts};

#[tokio::main]
async fn main() {
    let opts = AdminOpts::parse();
    tsn_nodes::common::init_tracing("warn");
    match run(&opts).await {
        Ok(done) => println!("{done}"),
        Err(e) => {
            eprintln!("tsn_admin: {e:#}");
            std::process::exit(1);
        }
    }
}
