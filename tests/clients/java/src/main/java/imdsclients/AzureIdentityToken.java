package imdsclients;

import com.azure.core.credential.AccessToken;
import com.azure.core.credential.TokenRequestContext;
import com.azure.identity.ManagedIdentityCredential;
import com.azure.identity.ManagedIdentityCredentialBuilder;

/** An unmodified app on com.azure:azure-identity: ManagedIdentityCredential. Args: resource [clientId]. */
public final class AzureIdentityToken {
    private AzureIdentityToken() {}

    public static void main(String[] args) {
        try {
            ManagedIdentityCredentialBuilder builder = new ManagedIdentityCredentialBuilder();
            if (args.length > 1) {
                builder.clientId(args[1]);
            }
            ManagedIdentityCredential credential = builder.build();
            AccessToken token = credential.getTokenSync(new TokenRequestContext().addScopes(args[0] + "/.default"));
            Report.token(token.getToken(), token.getExpiresAt().toEpochSecond());
        } catch (RuntimeException error) {
            Report.failure(error);
        }
        System.exit(0); // the HTTP client's threads would keep the JVM alive
    }
}
