# leading comment
cluster dev {}
cluster "one" { num_nodes = 1 }
job "j" { 
  cluster = cluster.dev
  run = "true"   
  depends_on = [ job.a , job.b ]
  lifecycle { ignore_changes = [run] }
}
service "s" {
  cluster = cluster.dev
  readiness_probe {
    path = "/health"
     initial_delay_seconds = 30
  }
  replicas=2
}


module "m" {
  source = "./modules/sweep"
  count = 2
  lr_list = [ "1e-4" ,"3e-4" ]
}
