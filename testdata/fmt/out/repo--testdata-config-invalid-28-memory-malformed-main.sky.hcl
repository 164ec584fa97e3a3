cluster "cpu" {
  resources {
    cpus   = "16+"
    memory = "4xx"
  }
}
