from mmlab.cli import app

app(prog_name="mmlab")
