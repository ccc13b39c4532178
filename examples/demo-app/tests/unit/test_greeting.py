from demo_app.greeting import DEFAULT_NAME, MAX_NAME_LENGTH, greet, normalize_name


def test_greet_uses_the_name():
    assert greet("Ada") == "Hello, Ada!"


def test_greet_defaults_to_the_world():
    assert greet() == "Hello, world!"
    assert greet("") == "Hello, world!"


def test_normalize_name_collapses_whitespace():
    assert normalize_name("  Grace \n Hopper ") == "Grace Hopper"


def test_normalize_name_falls_back_for_blank_names():
    assert normalize_name("   ") == DEFAULT_NAME
    assert normalize_name(None) == DEFAULT_NAME


def test_normalize_name_caps_the_length():
    assert len(normalize_name("x" * 500)) == MAX_NAME_LENGTH
