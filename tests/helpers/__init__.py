"""What tests share: processes to start, fakes to build, parts to wait for. Test modules import from here (or
use conftest fixtures), never from one another (tests/unit/test_test_layout.py)."""
