region = "us-east-1"

cluster "dev" {
  resources {
    infra = "aws/us-east-1"
  }
}
