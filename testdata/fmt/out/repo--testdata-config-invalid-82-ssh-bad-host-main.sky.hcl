infra "ssh" "rack" {
  hosts = ["10.0.0.5", "ubuntu@10.0.0.6:ssh"]
  user  = "ubuntu"
}

infra "ssh" "empty" {
  user = "ubuntu"
}
