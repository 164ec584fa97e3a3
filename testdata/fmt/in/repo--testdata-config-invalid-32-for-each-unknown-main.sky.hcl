cluster "dev" {
  num_nodes = 2
}

job "probe" {
  for_each = toset([cluster.dev.head_ip])
  cluster  = cluster.dev
  run      = "ping -c 1 ${each.key}"
}
