locals {
  a = templatefile("x", {
    b = <<-EOT
      ${foo}
      %{for x in y~}
      ${x}
      %{endfor}
    EOT
  })
  c = [<<EOT
x
EOT
  , 2]
  d = var.x
  e = var.a ? 1 : 2
  f = { a = 1 }
  g = {
    # comment in object
    x               = 1 # trailing
    yy              = 2
    /* block */ zzz = 3
  }
  h = var.x /* c */ + 1
  i = [
    1,  # one
    22, # two
  ]
}
# final comment without newline
