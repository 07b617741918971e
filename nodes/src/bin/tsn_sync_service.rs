use tsn_nodes::common::{node_main, shutdown_signal};
use tsn_nodes::sync::{run, SyncOpts};

fn main() -> anyhow::Result<()> {
    node_main(
        |o: &SyncOpts| (&o.common, &o.node),
        |opts| run(opts, shutdown_signal()),
    )
}
