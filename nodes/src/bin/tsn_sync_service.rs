use tsn_nodes::sync::{bind, run, SyncOpts};

fn main() -> anyhow::Result<()> {
    tsn_nodes::common::node_main(|o: &SyncOpts| (&o.common, &o.node), bind, run)
}
