# tests/ is on sys.path (pytest's default "prepend" import mode adds conftest directories), so the
# unit and distributed tests share tests/pcgrad_reference.py.
