"""A bot module that fails as it is imported, as one reading a missing token would."""

import os

TOKEN = os.environ["BOTSESSIONS_TEST_TOKEN_THAT_IS_NEVER_SET"]
