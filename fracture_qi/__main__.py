from fracture_qi.cli.main import entry

entry()
