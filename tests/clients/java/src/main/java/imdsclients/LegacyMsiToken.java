package imdsclients;

import com.microsoft.azure.AzureEnvironment;
import com.microsoft.azure.credentials.MSICredentials;
import java.lang.reflect.Field;
import java.lang.reflect.Method;
import java.util.Map;

/**
 * An unmodified app on the legacy com.microsoft.azure:azure-client-authentication: MSICredentials.
 * Args: resource [clientId]. The library keeps the expiry it parsed in a private cache; it is
 * read back (not recomputed) so the test sees what the library believes.
 */
public final class LegacyMsiToken {
    private LegacyMsiToken() {}

    public static void main(String[] args) {
        try {
            MSICredentials credentials = new MSICredentials(AzureEnvironment.AZURE);
            if (args.length > 1) {
                credentials = credentials.withClientId(args[1]);
            }
            String token = credentials.getToken(args[0]);
            Report.token(token, cachedExpiry(credentials, args[0]));
        } catch (Exception error) {
            Report.failure(error);
        }
        System.exit(0);
    }

    /** expires_on as the library parsed it (Integer.parseInt), after checking it is not expired. */
    private static long cachedExpiry(MSICredentials credentials, String resource) throws ReflectiveOperationException {
        Field cacheField = MSICredentials.class.getDeclaredField("cache");
        cacheField.setAccessible(true);
        Object msiToken = ((Map<?, ?>) cacheField.get(credentials)).get(resource);
        Method isExpired = msiToken.getClass().getDeclaredMethod("isExpired");
        isExpired.setAccessible(true);
        if ((Boolean) isExpired.invoke(msiToken)) {
            throw new IllegalStateException("the library considers its fresh token expired");
        }
        Field expiresOn = msiToken.getClass().getDeclaredField("expiresOn");
        expiresOn.setAccessible(true);
        return Integer.parseInt((String) expiresOn.get(msiToken));
    }
}
