skyform {
  state "s4" {
    bucket = "team-state"
    key    = "prod/llm.skystate"
    region = "us-east-1"
  }
}

cluster "dev" {}
