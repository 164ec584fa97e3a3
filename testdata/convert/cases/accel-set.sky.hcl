# Converted from accel-set.yaml by `skyform convert`.
cluster "infer" {
  resources {
    accelerators = toset(["L4:1", "A10G:1"])
  }
}

job "infer" {
  cluster = cluster.infer

  resources {
    accelerators = toset(["L4:1", "A10G:1"])
  }

  run = "python infer.py"
}
