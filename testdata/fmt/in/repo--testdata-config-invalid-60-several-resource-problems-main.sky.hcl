# Three malformed resource requests in one block: all should be reported at once.
cluster "gpu" {
  resources {
    accelerators = "A100:8"
    cpus         = "32++"
    memory       = "4xx"
    infra        = "awz/us-east-1"
  }
}
