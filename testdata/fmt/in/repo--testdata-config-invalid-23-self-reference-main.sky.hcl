cluster "dev" {
  num_nodes = 2
  envs = {
    MASTER_ADDR = cluster.dev.head_ip
  }
}
