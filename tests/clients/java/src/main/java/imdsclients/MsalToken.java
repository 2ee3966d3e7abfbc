package imdsclients;

import com.microsoft.aad.msal4j.IAuthenticationResult;
import com.microsoft.aad.msal4j.ManagedIdentityApplication;
import com.microsoft.aad.msal4j.ManagedIdentityId;
import com.microsoft.aad.msal4j.ManagedIdentityParameters;

/** An unmodified app on MSAL for Java: ManagedIdentityApplication. Args: resource [clientId]. */
public final class MsalToken {
    private MsalToken() {}

    public static void main(String[] args) {
        try {
            ManagedIdentityId id = args.length > 1
                    ? ManagedIdentityId.userAssignedClientId(args[1])
                    : ManagedIdentityId.systemAssigned();
            ManagedIdentityApplication app = ManagedIdentityApplication.builder(id).build();
            IAuthenticationResult result = app.acquireTokenForManagedIdentity(
                    ManagedIdentityParameters.builder(args[0]).build()).get();
            Report.token(result.accessToken(), result.expiresOnDate().getTime() / 1000);
        } catch (Exception error) {
            Report.failure(error);
        }
        System.exit(0);
    }
}
