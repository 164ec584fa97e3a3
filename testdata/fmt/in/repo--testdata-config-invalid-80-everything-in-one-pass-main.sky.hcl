clustr "x" {}

cluster "dev" {
  num_nodez = 2
  num_nodes = "two"
  resources {
    accelerators = "A100:x"
    cpus         = "32++"
  }
}

cluster "dev" {}

job "a" {
  cluster    = cluster.devv
  depends_on = [job.b]
}

job "b" {
  cluster    = cluster.dev
  run        = "${var.nope}"
  depends_on = [job.c]
}

job "c" {
  cluster    = cluster.dev
  run        = "x"
  depends_on = [job.b]
}

job "d" {
  for_each = 3
  cluster  = cluster.dev
  run      = "x"
}
