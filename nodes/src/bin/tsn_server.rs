use tsn_nodes::server::{bind, run, ServerOpts};

fn main() -> anyhow::Result<()> {
    tsn_nodes::common::node_main(|o: &ServerOpts| (&o.common, &o.node), bind, run)
}
