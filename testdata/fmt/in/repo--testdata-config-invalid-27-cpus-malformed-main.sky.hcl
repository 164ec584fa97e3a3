cluster "cpu" {
  resources {
    cpus = "32++"
  }
}
