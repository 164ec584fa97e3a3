infra "k8s" "lab" {
  context   = "lab"
  namespace = "ml"
}

cluster "dev" {
  resources {
    infra = "k8s/lab"
  }
}
