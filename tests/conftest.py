import os

import hypothesis

# CI derandomizes hypothesis (a fixed seed), so a red run is reproducible; locally examples vary.
hypothesis.settings.register_profile("ci", derandomize=True, deadline=None, max_examples=40, print_blob=True)
hypothesis.settings.register_profile("dev", deadline=None, max_examples=40)
hypothesis.settings.load_profile("ci" if os.environ.get("CI") else "dev")
