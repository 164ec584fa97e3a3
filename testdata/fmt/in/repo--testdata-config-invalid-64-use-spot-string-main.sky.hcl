cluster "spot" {
  resources {
    accelerators = "L4:1"
    use_spot     = "true"
  }
}
