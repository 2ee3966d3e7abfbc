package imdsclients;

/** One JSON line on stdout: the token and the expiry the SDK computed, or the SDK's error. */
final class Report {
    private Report() {}

    static void token(String token, long expiresOnEpochSeconds) {
        System.out.println("{\"token\":" + quote(token) + ",\"expires_on\":" + expiresOnEpochSeconds + "}");
    }

    /** Prints the failure (the innermost message too) and exits 3. */
    static void failure(Throwable error) {
        Throwable root = error;
        while (root.getCause() != null) {
            root = root.getCause();
        }
        String text = error + (root == error ? "" : " / " + root);
        System.out.println("{\"error\":" + quote(text) + "}");
        System.exit(3);
    }

    private static String quote(String text) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : text.toCharArray()) {
            if (c == '"' || c == '\\') {
                out.append('\\').append(c);
            } else if (c < 0x20) {
                out.append(String.format("\\u%04x", (int) c));
            } else {
                out.append(c);
            }
        }
        return out.append('"').toString();
    }
}
