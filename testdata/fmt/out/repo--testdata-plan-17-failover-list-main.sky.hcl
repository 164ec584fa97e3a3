# A GPU cluster across three clouds: the plan shows the chosen placement and the ranked
# failover list (cheapest first), spot and on-demand.
cluster "train" {
  num_nodes = 2
  resources {
    accelerators = "A100:8"
    use_spot     = true
  }
}
