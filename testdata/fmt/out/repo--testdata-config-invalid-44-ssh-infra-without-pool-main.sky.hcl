infra "ssh" {
  hosts         = ["10.0.0.11", "10.0.0.12"]
  user          = "ubuntu"
  identity_file = "~/.ssh/id_ed25519"
}

cluster "rack" {
  resources {
    infra = "ssh/rack1"
  }
}
