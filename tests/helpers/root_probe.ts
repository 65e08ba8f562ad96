/**
 * One root test and nothing else, for tests/test_summary_test.ts to run where the machine
 * lacks what root tests need: it must be skipped locally and fail under CI.
 */

import { rootTest } from "../_netns.ts";

rootTest("a root test", () => {});
